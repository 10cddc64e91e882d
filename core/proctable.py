"""The process table: one pass over /proc, descendants, signals to sets of processes.

Helpers of core.process with no state of their own but a short-lived cache of
the last table read, shared by a burst of concurrent stops.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import psutil
import trio

#: Environment variable that marks a process (and its descendants) as ours.
CHILD_ENV = "CONTROL_CENTER_CHILD"

_me: psutil.Process = psutil.Process()


def this_process() -> psutil.Process:
    """This process (cached; renewed in a forked copy of the interpreter)."""
    global _me
    if _me.pid != os.getpid():
        _me = psutil.Process()
    return _me


@dataclass(frozen=True)
class Table:
    """One pass over /proc: each process's parent and group, and the zombies."""

    parents: dict[int, int] = field(default_factory=dict)
    groups: dict[int, int] = field(default_factory=dict)
    zombies: frozenset[int] = frozenset()

    def group_alive(self, pgid: int) -> bool:
        """Whether a live (non-zombie) process of group `pgid` was in the table."""
        zombies = self.zombies
        return any(g == pgid and pid not in zombies for pid, g in self.groups.items())


# The last table read, with when its reading began: a burst of stops
# (shutdown of 200 components) shares one read through fresh_scan().
_scan_cache: tuple[float, Table] = (-1.0, Table())


def scan() -> Table:
    """Every process's parent and group, and the zombies: one pass over /proc."""
    global _scan_cache
    began = time.monotonic()
    parents, groups, zombies = {}, {}, set()
    try:
        names = os.listdir("/proc")
    except OSError:
        # Out of descriptors or memory: the last table read. A stop still
        # reaches the process group and the cgroup; it can only miss a
        # descendant forked since that read that also left the group.
        return _scan_cache[1]
    for name in names:
        if not name.isdigit():
            continue
        try:
            # os.open/os.read: three system calls a process, where open() takes six.
            fd = os.open(f"/proc/{name}/stat", os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = os.read(fd, 4096)
            finally:
                os.close(fd)
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
            state, ppid, pgrp = data[data.rfind(b")") + 2:].split(None, 3)[:3]
            pid = int(name)
            parents[pid] = int(ppid)
            groups[pid] = int(pgrp)
            if state == b"Z":
                zombies.add(pid)
        except (OSError, ValueError):
            continue
    table = Table(parents, groups, frozenset(zombies))
    _scan_cache = (began, table)
    return table


async def fresh_scan() -> Table:
    """A process table read after this call began; concurrent callers share one read.

    Never older than the call: a table from before the request could miss a
    process forked just before, which would then survive the stop.
    """
    asked = time.monotonic()
    # One scheduling round lets the other stops of a burst reach this point too.
    await trio.lowlevel.checkpoint()
    if _scan_cache[0] >= asked:
        return _scan_cache[1]
    return scan()


def descendant_pids(pid: int, table: Mapping[int, int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for child, parent in table.items():
        children.setdefault(parent, []).append(child)
    found = []
    todo = list(children.get(pid, ()))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, ()))
    return found


def processes(pids: Iterable[int]) -> list[psutil.Process]:
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            found.append(psutil.Process(pid))
    return found


def descendants(pid: int, table: Table | None = None) -> list[psutil.Process]:
    """Every live descendant of `pid` (empty if `pid` is gone)."""
    return processes(descendant_pids(pid, (table or scan()).parents))


def alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (is_running() also guards against pid reuse)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def marker(proc: psutil.Process) -> str | None:
    try:
        return proc.environ().get(CHILD_ENV)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return None


def kill(procs: Iterable[psutil.Process], sig: int) -> list[psutil.Process]:
    """Send `sig` to each live process; returns those it reached."""
    reached = []
    for proc in procs:
        if proc.pid == this_process().pid or not alive(proc):
            continue
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.send_signal(sig)
            reached.append(proc)
    return reached


def signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def pid_list(procs: Sequence[psutil.Process]) -> str:
    return ", ".join(str(p.pid) for p in procs)
