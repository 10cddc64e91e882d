"""What switching a child's user costs per spawn: setpriv's options or subprocess's.

    sudo .venv/bin/python bench/spawn_user_bench.py     # needs root

Three ways to start `true` the way core.spawn does (setpriv --pdeathsig, then
sh's parent check): as the supervisor itself ("plain"), as nobody through
setpriv's --reuid/--regid/--init-groups ("setpriv"), and as nobody through
subprocess's user=/group=/extra_groups= ("subprocess", which makes
subprocess fork() instead of vfork()). Interleaved, 200 rounds, in a process
that imports what the supervisor imports (its size is what a fork copies).
Popen() is the time the event loop is held; spawn-to-exit includes the
exec of setpriv, sh and true.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time

import docker  # noqa: F401
import psutil

import core.app
import core.cli
import core.web.app  # noqa: F401

print("rss MB", round(psutil.Process().memory_info().rss / 2**20, 1))
SH = "/bin/sh"
CHECK = f'[ "$PPID" = {os.getpid()} ] || exit 1; exec "$@"'
WRAP = ["setpriv", "--pdeathsig", "KILL"]
TAIL = ["--", SH, "-c", CHECK, "cc", "true"]
NOBODY = 65534


def run(variant: str) -> tuple[float, float]:
    """(seconds in Popen(), seconds from spawn to exit) for one spawn."""
    kw: dict[str, object] = {}
    argv = [*WRAP, *TAIL]
    if variant == "setpriv":
        argv = [*WRAP, "--reuid", str(NOBODY), "--regid", str(NOBODY), "--init-groups", *TAIL]
    elif variant == "subprocess":
        kw = {"user": NOBODY, "group": NOBODY, "extra_groups": [NOBODY]}
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
                         **kw)  # type: ignore[call-overload]
    t1 = time.perf_counter()
    p.communicate()
    assert p.returncode == 0, variant
    return t1 - t0, time.perf_counter() - t0


def main() -> None:
    res: dict[str, tuple[list[float], list[float]]] = {
        v: ([], []) for v in ("plain", "setpriv", "subprocess")}
    for _ in range(200):
        for variant, (in_popen, total) in res.items():
            a, b = run(variant)
            in_popen.append(a)
            total.append(b)
    for variant, (in_popen, total) in res.items():
        print(f"{variant:11s} Popen() median {statistics.median(in_popen) * 1e3:.2f} ms  "
              f"spawn-to-exit median {statistics.median(total) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
