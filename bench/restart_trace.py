"""Where a restart's time goes, seen from outside: what the new pid runs, and when.

    python bench/restart_trace.py [--pm2 /tmp/pm2/node_modules/.bin/pm2] [--children 50]
        [--kills 8]

Starts ours (or PM2) with `--children` programs running `sleep 3600`, as
bench/peers.py does, then SIGKILLs one child `--kills` times, 1.5 s apart.
After each kill it reads the supervisor's children without sleeping (about
0.1 ms a read) and prints, in milliseconds since the kill, when the victim
was reaped, when a new child appeared and each program it ran (a forked
copy of the supervisor, then every exec) until it runs `sleep`. Bounded:
one second per kill at most.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers


def _program(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[0].decode(errors="replace") or "(between execs)"
    except OSError:
        return None


def trace(ppid: int) -> list[tuple[float, str]]:
    """One kill and the events that follow it, until the successor runs the program."""
    before = set(peers._children(ppid) or [])
    victim = min(peers.children_running_program(ppid))
    events: list[tuple[float, str]] = []
    seen: dict[int, str | None] = {}
    began = time.perf_counter()
    os.kill(victim, signal.SIGKILL)
    reaped = False
    while (now := time.perf_counter() - began) < 1.0:
        kids = set(peers._children(ppid) or [])
        if not reaped and victim not in kids:
            events.append((now * 1000, "victim reaped"))
            reaped = True
        for pid in kids - before:
            program = _program(pid)
            if program is not None and seen.get(pid) != program:
                seen[pid] = program
                events.append((now * 1000, f"pid {pid}: {program}"))
                if program == peers.PROGRAM[0]:
                    return events
    events.append((now * 1000, "no successor within 1 s"))
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pm2", help="trace PM2 (this pm2 command) instead of ours")
    parser.add_argument("--children", type=int, default=50)
    parser.add_argument("--kills", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cc-trace-") as tmp:
        peer: peers.Peer
        if args.pm2:
            peer = peers.PM2("pm2", Path(tmp), args.children, command=args.pm2)
        else:
            peer = peers.Ours("ours", Path(tmp), args.children)
        try:
            peer.launch()
            peers.wait_until(lambda: len(peers.children_running_program(peer.pid))
                             == args.children, 60, f"{peer.name}'s children")
            time.sleep(3.0)
            totals = []
            for _ in range(args.kills):
                events = trace(peer.pid)
                print(" | ".join(f"{ms:.2f} {what}" for ms, what in events))
                totals.append(events[-1][0])
                time.sleep(peers.KILL_EVERY)
            print(f"\n{peer.name}: kill to `{peers.PROGRAM[0]}` running, median "
                  f"{statistics.median(totals):.2f} ms of {len(totals)}")
        finally:
            peer.stop()


if __name__ == "__main__":
    main()
