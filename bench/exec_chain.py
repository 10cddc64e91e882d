"""What the death signal's wrapper costs a spawn: setpriv and sh before the program.

    python bench/exec_chain.py [--runs 100]

Times `Popen` + wait of `/usr/bin/true` started directly, through
`setpriv --pdeathsig KILL --`, through `sh -c CHECK` alone, and through both
(the chain core/spawn.py uses), median of `--runs` each, from this
interpreter (vfork: no preexec_fn). Bounded: `--runs` spawns per row, each
with a 10 s timeout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import time


def median_ms(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(argv, stdin=subprocess.DEVNULL, timeout=10, check=True)
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    true = shutil.which("true") or "/bin/true"
    setpriv = shutil.which("setpriv")
    sh = shutil.which("sh") or "/bin/sh"
    check = f'[ "$PPID" = {os.getpid()} ] || exit 1; exec "$@"'
    rows = [("direct", [true]), ("sh -c CHECK", [sh, "-c", check, "x", true])]
    if setpriv is not None:
        wrapper = [setpriv, "--pdeathsig", "KILL", "--"]
        rows[1:1] = [("setpriv", [*wrapper, true])]
        rows.append(("setpriv + sh (core/spawn.py)", [*wrapper, sh, "-c", check, "x", true]))
    print(f"Popen + wait of {true}, median of {args.runs}, {os.cpu_count()} cores")
    for name, argv in rows:
        print(f"{name:32s} {median_ms(argv, args.runs):6.2f} ms")


if __name__ == "__main__":
    main()
