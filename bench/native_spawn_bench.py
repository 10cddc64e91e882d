"""How long the native spawner holds the supervisor, by how the child joins its cgroup.

    python bench/native_spawn_bench.py [--runs 10] [--busy 2]

The supervisor is suspended from the clone until the child execs (CLONE_VFORK).
A child for a cgroup is either created in it (clone3 with CLONE_INTO_CGROUP,
where the kernel can) or moved into it by writing cgroup.procs before the
exec, a migration that waits for an RCU grace period. This times
`core._spawn.spawn` of /bin/true, one every 0.5 s (past a grace period), into
no cgroup, created in a fresh cgroup, and moved into a fresh cgroup: on a
quiet machine, then beside
`--busy` loops that keep the cores busy (each ends by itself after 60 s, and
is killed by pid when the rounds are done). Needs the native spawner built
and a cgroup v2 hierarchy where this process may create cgroups (root).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import _spawn, cgroup  # noqa: E402

BUSY = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass"


#: How the child joins its cgroup: not at all, created in it, moved into it.
MODES = ("no cgroup", "created in its cgroup", "moved into its cgroup")


def spawn_ms(base: Path, mode: str, env: list[bytes], null: int) -> float:
    time.sleep(0.5)
    leaf = base / f"r{time.monotonic_ns()}"
    leaf.mkdir()
    fds = []
    if mode != MODES[0]:
        fds.append(os.open(leaf / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
    if mode == MODES[1]:
        fds.append(os.open(leaf, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    procs, directory = [*fds, -1, -1][:2]
    try:
        began = time.perf_counter()
        pid = _spawn.spawn("/bin/true", ["true"], env, None, (null, null, null), procs,
                           directory, -1, -1, None, -1, os.getpid())
        took = (time.perf_counter() - began) * 1000
        os.waitpid(pid, 0)
    finally:
        for fd in fds:
            os.close(fd)
        leaf.rmdir()
    return took


def rounds(label: str, base: Path, runs: int, env: list[bytes], null: int) -> None:
    for mode in MODES:
        if mode == MODES[1] and not _spawn.creates_in_cgroup():
            print(f"{label}, {mode}: not on this machine (no clone3 with CLONE_INTO_CGROUP)")
            continue
        times = [spawn_ms(base, mode, env, null) for _ in range(runs)]
        print(f"{label}, {mode}: median {statistics.median(times):.2f} ms, "
              f"max {max(times):.2f} ms ({runs} spawns)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    runs = max(1, min(args.runs, 30))  # 3 x runs x 0.5 s beside the loops: within their 60 s
    tree, why = cgroup.open_tree(f"control-center-bench-{os.getpid()}")
    if tree is None:
        raise SystemExit(f"cgroups cannot be made here: {why}")
    env = [b"%s=%s" % (os.fsencode(k), os.fsencode(v)) for k, v in os.environ.items()]
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        rounds("quiet machine", tree.base, runs, env, null)
        busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.busy)]
        try:
            rounds(f"beside {args.busy} busy loops", tree.base, runs, env, null)
        finally:
            for proc in busy:
                proc.kill()
                proc.wait()
    finally:
        os.close(null)
        tree.close()


if __name__ == "__main__":
    main()
