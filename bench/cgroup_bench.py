"""What a cgroup per run costs the kernel: mkdir, a process joining (migration), rmdir.

    python bench/cgroup_bench.py [--runs 200]

Needs a cgroup v2 hierarchy where this process may create cgroups (root).
Makes its own tree under this process's cgroup, starts its own `sleep`
processes (each SIGKILLed by pid right after it joined) and removes
everything before it returns. A migration write-locks the kernel's
cgroup_threadgroup_rwsem, which waits for an RCU grace period unless the
hierarchy is mounted with favordynmods: that wait is the figure to watch.
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

from core import cgroup  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    tree, why = cgroup.open_tree(f"control-center-bench-{os.getpid()}")
    if tree is None:
        raise SystemExit(f"cgroups cannot be made here: {why}")
    made, joined, removed = [], [], []
    try:
        for _ in range(min(args.runs, 2000)):
            began = time.perf_counter()
            leaf = tree.new_run("c", None, None)
            made.append(time.perf_counter() - began)
            proc = subprocess.Popen(["sleep", "60"])
            began = time.perf_counter()
            with open(leaf.procs_file, "w") as f:
                f.write(str(proc.pid))
            joined.append(time.perf_counter() - began)
            proc.kill()
            proc.wait(5)
            began = time.perf_counter()
            leaf.remove()
            removed.append(time.perf_counter() - began)
    finally:
        tree.close()
    print(f"{os.cpu_count()} cores, kernel {os.uname().release}, {len(made)} runs")
    for name, xs in (("mkdir of a run's leaf", made), ("a process joins (migration)", joined),
                     ("rmdir of the leaf", removed)):
        ms = sorted(x * 1000 for x in xs)
        print(f"{name}: median {statistics.median(ms):.3f} ms, p90 "
              f"{ms[int(len(ms) * 0.9)]:.3f} ms, max {ms[-1]:.3f} ms")


if __name__ == "__main__":
    main()
