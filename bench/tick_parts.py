"""Where a running supervisor's CPU goes at rest, part by part, per tick.

    python bench/tick_parts.py [--children 50] [--seconds 60] [--no-cgroups]

Starts `python -m core` (as this script, in a child process) with
`--children` programs `sleep 3600`, each part of the tick wrapped to count
its thread CPU time (time.thread_time_ns: the supervisor runs the tick on
one thread). After 20 s the counts start; after `--seconds` more the child
prints, per tick: the measuring (the children's figures, the cgroup
figures, the machine's figures), the snapshot (the hub's part of it), and
the whole main thread, which includes the loop's wake-up. The child is
ended by its pid; its children die with it (their death signal).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WARM_UP = 20.0

#: (module, class or None, function, label): the parts counted.
PARTS = [
    ("core.ticking", "Ticking", "_measure", "measuring"),
    ("core.ticking", "Ticking", "_read_stats", "  the figures, all"),
    ("core.snapshot", "StatsReader", "read", "    the children's"),
    ("core.containment", "Containment", "figures", "    the cgroups'"),
    ("core.snapshot", "StatsReader", "_machine_figures", "    the machine's"),
    ("core.ticking", "Ticking", "_publish", "the snapshot"),
    ("core.hub", "Hub", "publish", "  the hub (history point)"),
]


def _count(owner: Any, name: str, label: str, spent: dict[str, int],
           calls: dict[str, int]) -> None:
    """Wrap owner.name so that its thread CPU time adds up under `label`."""
    import inspect

    real: Callable[..., Any] = getattr(owner, name)
    if inspect.iscoroutinefunction(real):
        async def counted_async(*args: Any, **kwargs: Any) -> Any:
            began = time.thread_time_ns()
            try:
                return await real(*args, **kwargs)
            finally:
                spent[label] += time.thread_time_ns() - began
                calls[label] += 1
        setattr(owner, name, counted_async)
    else:
        def counted(*args: Any, **kwargs: Any) -> Any:
            began = time.thread_time_ns()
            try:
                return real(*args, **kwargs)
            finally:
                spent[label] += time.thread_time_ns() - began
                calls[label] += 1
        setattr(owner, name, counted)


def serve(config: str) -> None:
    """The child: the supervisor with its parts counted; SIGUSR2 starts, SIGUSR1 reports."""
    import importlib

    spent: dict[str, int] = defaultdict(int)
    calls: dict[str, int] = defaultdict(int)
    for module, cls, name, label in PARTS:
        _count(getattr(importlib.import_module(module), cls), name, label, spent, calls)
    began = [time.thread_time_ns()]

    def start(*_: object) -> None:
        spent.clear()
        calls.clear()
        began[0] = time.thread_time_ns()

    def report(*_: object) -> None:
        ticks = max(calls["the snapshot"], 1)
        lines = [f"{ticks} ticks; per tick, thread CPU:"]
        for _module, _cls, _name, label in PARTS:
            lines.append(f"| {label} | {spent[label] / 1e6 / ticks:.3f} ms |")
        whole = (time.thread_time_ns() - began[0]) / 1e6 / ticks
        lines.append(f"| the whole main thread | {whole:.3f} ms |")
        print("\n".join(lines), file=sys.stderr, flush=True)
        os._exit(0)

    signal.signal(signal.SIGUSR2, start)
    signal.signal(signal.SIGUSR1, report)
    from core.cli import main

    sys.exit(main(["--config", config]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--children", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--no-cgroups", action="store_true")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    children = max(1, min(args.children, 1000))
    seconds = max(2.0, min(args.seconds, 600.0))
    from core_bench import write_config  # bench/, beside this script

    with tempfile.TemporaryDirectory(prefix="cc-tick-parts-") as tmp:
        path = write_config(Path(tmp), children, interval=2.0)
        if args.no_cgroups:
            text = path.read_text().replace("port = 0\n", "port = 0\ncgroups = false\n", 1)
            path.write_text(text)
        proc = subprocess.Popen([sys.executable, __file__, "--serve", "config.toml"], cwd=tmp,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            time.sleep(WARM_UP)
            if proc.poll() is not None:
                raise SystemExit(f"the supervisor ended: {proc.communicate()[1][-2000:]}")
            proc.send_signal(signal.SIGUSR2)
            time.sleep(seconds)
            proc.send_signal(signal.SIGUSR1)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    found = err.rfind(" ticks; per tick")
    if found < 0:
        raise SystemExit(f"no report from the supervisor: {err[-2000:]}")
    print(f"\n{children} children `sleep 3600`, {seconds:g} s, {os.cpu_count()} cores\n")
    print(err[err.rfind("\n", 0, found) + 1:].strip())

if __name__ == "__main__":
    main()
