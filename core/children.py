"""The registry of live children, and what is ours but not one of them.

`LIVE` maps each live ChildProcess leader's pid to it (core.process adds and
removes them, under `REGISTRY_LOCK`). From it follow the stragglers
(descendants of the supervisor outside every live child's group: orphans we
adopted as a subreaper), the adopted zombies to reap, and the SIGKILL of
everything at exit.
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import TYPE_CHECKING

import psutil

from core.proctable import Table, alive, descendant_pids, processes, scan, this_process

if TYPE_CHECKING:
    from core.process import ChildProcess

_PR_SET_CHILD_SUBREAPER = 36

# Loaded before any fork: the child side of fork must not load libraries.
libc = ctypes.CDLL(None, use_errno=True)

# reap_orphans() may run in a worker thread: between Popen returning and the
# child entering LIVE, it must not mistake a fast-exiting new child for an orphan.
REGISTRY_LOCK = threading.Lock()

#: Live children by leader pid, for kill_all_now() at exit and reap_orphans().
LIVE: dict[int, ChildProcess] = {}


def enable_subreaper(on: bool = True) -> bool:
    """Make this process adopt orphaned descendants instead of init (Linux).

    Called once at start-up: a grandchild whose parent dies is then re-parented
    to us, where stop() can still find it (and where reap_orphans() must reap
    it). Returns False if unsupported.
    """
    return libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0


def straggler_pids(table: Table) -> list[int]:
    """Descendants of this supervisor in `table` outside every live child's group."""
    groups = set(LIVE)
    me = this_process().pid
    return [pid for pid in descendant_pids(me, table.parents)
            if pid not in LIVE and table.groups.get(pid) not in groups]


def stragglers(table: Table | None = None) -> list[psutil.Process]:
    """Descendants of this supervisor that are neither a live child nor in a live child's group.

    With the subreaper enabled these are orphans of our children's descendants.
    """
    return [p for p in processes(straggler_pids(table or scan())) if alive(p)]


def reap_orphans() -> list[int]:
    """Reap adopted zombies (exited processes that are not ChildProcess leaders).

    Never waitpid(-1): that would steal our own children's exit status. Zombies
    in the supervisor's own session are left alone too: those are children that
    other code started with a plain fork and will wait for itself.
    """
    # Cheap first (every tick calls this): no child of ours waits to be reaped,
    # so no pass over /proc. Our own exited leaders show here too, briefly.
    try:
        waiting = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return []
    if waiting is None:
        return []
    with REGISTRY_LOCK:
        return reap_from(scan())


def reap_from(table: Table) -> list[int]:
    """reap_orphans() on a table already read; the caller holds REGISTRY_LOCK."""
    reaped = []
    own_session = os.getsid(0)
    me = os.getpid()
    for pid in table.zombies:
        if table.parents.get(pid) != me or pid in LIVE:
            continue
        try:
            if os.getsid(pid) == own_session:
                continue
            done, _ = os.waitpid(pid, os.WNOHANG)
        except (ChildProcessError, ProcessLookupError):
            continue
        if done:
            reaped.append(done)
    return reaped


def kill_all_now() -> None:
    """SIGKILL every live child, its group and its known descendants (at exit)."""
    table = scan()  # one table for all: the kills below cannot add processes
    for child in list(LIVE.values()):
        child.kill_now(table)
