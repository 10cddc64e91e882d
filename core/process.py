"""One OS process: spawn, stop escalation, and the stragglers.

A ChildProcess is spawned from the main trio thread (core.spawn)
(own session, parent-death signal, stdin from /dev/null, stdout and stderr
drained line by line into a LogTail by core.output) and waited for with a pidfd, so the
event loop never blocks. Stopping it is polite first (the configured signal to
the whole process group and to every descendant seen just before), then
SIGKILL for whatever still lives, including grandchildren that left the group
with setsid(). When the leader exits on its own, what it left behind is ended
the same way (SIGTERM, LEFTOVER_GRACE, SIGKILL). The exited leader is reaped
only once that is done: until then its zombie keeps the process group's id
from being handed to an unrelated process that a late killpg() would hit.

Given a cgroup (core.cgroup), the child joins it before its program runs,
and a stop ends the whole cgroup too (cgroup.kill), which reaches what no
marker or process group can: a descendant that left the session and cleared
its environment.

Every child carries CHILD_ENV=<RUN_ID>/<n> in its environment. Descendants
inherit it, so a process that escaped its group and lost its parent can still
be traced back to the child that started it, in this run (`stop`) or by the
next one after a crash (core.leftovers).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import psutil
import trio

from core import spawn as spawn_mod
from core.children import (
    LIVE,
    REGISTRY_LOCK,
    enable_subreaper,
    kill_all_now,
    reap_from,
    reap_orphans,
    stragglers,
)
from core.logs import LogTail
from core.output import Output
from core.proctable import (
    CHILD_ENV,
    Table,
    alive,
    descendants,
    fresh_scan,
    kill,
    marker,
    pid_list,
    processes,
    scan,
    signame,
    this_process,
)
from core.spawn import SpawnError

if TYPE_CHECKING:
    from core.cgroup import Group

__all__ = ["CHILD_ENV", "RUN_ID", "ChildProcess", "SpawnError", "enable_subreaper",
           "kill_all_now", "reap_orphans", "stragglers"]

#: Variables of the supervisor's own environment that no child inherits: the
#: API token the command line client reads (`python -m core status`).
SUPERVISOR_SECRETS = frozenset({"CONTROL_CENTER_TOKEN"})

#: This supervisor process, unique across runs (pid + start time).
RUN_ID = f"{this_process().pid}-{round(this_process().create_time() * 100)}"

_counter = itertools.count(1)

# Kept under these names for the tests that look at the registry.
_live = LIVE
_registry_lock = REGISTRY_LOCK

#: After everything we know of is dead, how long the output readers may keep
#: reading before we close our ends of the pipes (something unknown holds them).
DRAIN_GRACE = 0.5

#: How long what a child left behind when it exited on its own gets after SIGTERM.
LEFTOVER_GRACE = 1.0

#: How long wait() lets the output readers catch up after the exit, so that the
#: last lines a child wrote come before the supervisor's "exited" note.
EXIT_DRAIN = 0.1

#: How long after a child exited on its own its leftovers are looked for.
LEFTOVER_CHECK_DELAY = 0.02

#: A SIGKILLed process is gone within this bound unless the kernel is stuck.
KILL_WAIT = 5.0


class ChildProcess:
    """One spawned OS process: its own session, death signal, drained output."""

    def __init__(self, popen: spawn_mod.Child, log: LogTail, marker: str,
                 on_exit_reaped: Callable[[ChildProcess], None] | None,
                 cgroup: Group | None = None) -> None:
        self._popen = popen
        #: The cgroup this run's processes are in (None: process-group containment).
        self.cgroup = cgroup
        self.pid: int = popen.pid
        self.pgid: int = popen.pid
        self.started_at: float = time.monotonic()
        self.returncode: int | None = None
        self.log = log
        self.marker = marker
        self._on_exit_reaped = on_exit_reaped
        # Opened before anything can reap the pid, so it cannot name another process.
        self._pidfd: int | None = os.pidfd_open(self.pid)
        self._wait_lock = trio.Lock()
        self._exited = trio.Event()
        self.output = Output(log)
        self._known: dict[int, psutil.Process] = {}
        self._stopping = False

    @classmethod
    async def spawn(cls, nursery: trio.Nursery, argv: Sequence[str], *, cwd: str | None,
                    env: Mapping[str, str] | None, log: LogTail,
                    on_exit_reaped: Callable[[ChildProcess], None] | None = None,
                    user: str | None = None, group: str | None = None,
                    umask: int | None = None, cgroup: Group | None = None) -> ChildProcess:
        """Start `argv`; must be called from trio's main thread (see core.spawn).

        `cgroup`: an empty cgroup the child runs in (joined before exec).

        `on_exit_reaped(child)` is called once, as soon as the exit status is
        known (returncode set); it must not raise.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        argv = list(argv)
        if not argv:
            raise SpawnError("empty command")
        marker = f"{RUN_ID}/{next(_counter)}"
        # The supervisor's own secrets stay out of its children (a component
        # that needs one says so in its own env).
        inherited = {k: v for k, v in os.environ.items() if k not in SUPERVISOR_SECRETS}
        full_env = {**inherited, **(env or {}), CHILD_ENV: marker}
        with _registry_lock:
            popen = spawn_mod.popen(argv, cwd=cwd, env=full_env, user=user, group=group,
                                    umask=umask,
                                    cgroup=cgroup.procs_file if cgroup is not None else None)
            try:
                child = cls(popen, log, marker, on_exit_reaped, cgroup)
            except OSError as exc:  # no descriptor left for its pidfd
                _abandon(popen)
                raise SpawnError(f"cannot watch {argv[0]}: {exc.strerror or exc}") from None
            _live[child.pid] = child
        try:
            child.output.take(popen)
        except OSError as exc:  # out of descriptors: a child we cannot drain must go
            child.kill_now()
            _abandon(popen)
            raise SpawnError(f"cannot take the output of {argv[0]}: {exc.strerror or exc}"
                             ) from None
        nursery.start_soon(child.output.run)
        nursery.start_soon(child._watch)
        # Not a cancellation point: a caller cancelled here would lose a live child.
        await trio.lowlevel.cancel_shielded_checkpoint()
        return child

    def __repr__(self) -> str:
        return f"<ChildProcess pid={self.pid} returncode={self.returncode}>"

    # -- exit -----------------------------------------------------------------

    async def _watch(self) -> None:
        try:
            await self.wait()
            if not self._stopping:
                # It exited on its own: end what it left behind, as a stop would,
                # once the restart that follows had its turn on the loop (what is
                # left lives a few milliseconds longer; the restart is not
                # delayed by a pass over /proc).
                await trio.sleep(LEFTOVER_CHECK_DELAY)
                await self.stop(signal.SIGTERM, LEFTOVER_GRACE)
        except BaseException:
            if self.returncode is not None and self.pid in _live:
                # Cancelled after the exit: no leftover, no zombie stays behind.
                self.kill_now()
            raise

    async def wait(self) -> int:
        """Wait for the leader to exit (without blocking the loop); returns its code."""
        async with self._wait_lock:
            while self.returncode is None:
                if self._pidfd is None:
                    break
                with contextlib.suppress(trio.ClosedResourceError):
                    # Closed under us means kill_now() finished it meanwhile.
                    await trio.lowlevel.wait_readable(self._pidfd)
                self._try_reap()
        with trio.move_on_after(EXIT_DRAIN):
            await self.output.done.wait()
        assert self.returncode is not None
        return self.returncode

    def _try_reap(self) -> bool:
        """Read the exit status if the leader has exited, leaving it a zombie.

        The zombie keeps its pid, and so the process group's id, from being
        handed to another process while stop() may still signal the group;
        _release() reaps it once we are done with the group.
        """
        if self.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            # Someone else reaped it; the status is lost.
            self.returncode = 255
        else:
            if info is None or info.si_pid == 0:
                return False
            exited = info.si_code == os.CLD_EXITED
            self.returncode = info.si_status if exited else -info.si_status
        self._popen.returncode = self.returncode  # keeps Popen.__del__ quiet
        self._exited.set()
        if self._on_exit_reaped is not None:
            self._on_exit_reaped(self)
        return True

    def _release(self) -> None:
        """Reap the exited leader and forget it: its group is no longer ours to signal."""
        if self.returncode is None:
            return
        with _registry_lock:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, os.WNOHANG)
            _live.pop(self.pid, None)
        if self.cgroup is not None and not self.cgroup.populated():
            self.cgroup.remove()  # this run's leaf; the component's cgroup stays
        fd, self._pidfd = self._pidfd, None
        if fd is not None:
            with contextlib.suppress(RuntimeError):  # RuntimeError: not in trio (at exit)
                trio.lowlevel.notify_closing(fd)
            os.close(fd)

    # -- signals --------------------------------------------------------------

    def signal_group(self, sig: int) -> None:
        """Send `sig` to the child's process group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)

    def _remember_descendants(self, table: Table) -> None:
        if self.returncode is None:
            for proc in descendants(self.pid, table):
                self._known.setdefault(proc.pid, proc)

    def _ours(self, table: Table | None = None) -> list[psutil.Process]:
        """Everything still alive that this child started: seen descendants, marked orphans."""
        found = {pid: p for pid, p in self._known.items() if alive(p)}
        if self.cgroup is not None:
            # Whatever it forked, however it detached: in its cgroup.
            for proc in processes(self.cgroup.pids()):
                found.setdefault(proc.pid, proc)
        # Members of live groups are covered by killpg (ours) or belong to another
        # child: only the rest can be an escapee of ours, recognised by its marker.
        for proc in stragglers(table):
            if proc.pid not in found and marker(proc) == self.marker:
                found[proc.pid] = proc
        return list(found.values())

    async def stop(self, sig: int, timeout: float) -> int:
        """Signal the group with `sig`, wait up to `timeout`, then SIGKILL whatever is left.

        Works on a child that already exited too: it then ends what the child
        left behind. Returns the leader's returncode. Never hangs.
        """
        try:
            return await self._stop(sig, timeout)
        except BaseException:
            if self.returncode is not None:
                # Cancelled once the leader was gone: what it left gets SIGKILL
                # now rather than never, and its zombie is reaped.
                self.kill_now()
            raise

    async def _stop(self, sig: int, timeout: float) -> int:
        deadline = trio.current_time() + timeout
        name = signame(sig)
        self._stopping = True
        table = await fresh_scan()
        exited = self.returncode is not None
        self._remember_descendants(table)
        others = [p for p in self._ours(table) if p.pid != self.pid]
        # Exited on its own and nothing of it left in that table: nothing can
        # appear later either (no live process of its is there to fork one).
        nothing_left = exited and not others and not table.group_alive(self.pgid)
        if self.returncode is None:
            self.signal_group(sig)
            kill(others, sig)
            extra = f" and {len(others)} descendant(s)" if others else ""
            self.log.note(f"sent {name} to process group {self.pgid}{extra}")
        elif not nothing_left:
            self.signal_group(sig)
            kill(others, sig)
            self.log.note(f"pid {self.pid} exited, leaving processes behind: sent {name}, "
                          f"SIGKILL in {timeout:.1f} s")
        with trio.move_on_at(deadline):
            await self.wait()
            # The leader is gone; give the rest of the group the same deadline.
            # Polled (no pidfd for processes that are not our children), less
            # often as it drags on: 200 stubborn stops must not saturate the loop.
            # Nothing left in the table read after the exit: no second pass.
            delay = 0.01
            while not nothing_left and (self._group_alive() or any(alive(p) for p in others)):
                await trio.sleep(delay)
                delay = min(delay * 1.5, 0.2)
        if self.returncode is None:
            self.log.note(f"still running after {timeout:.1f} s: sent SIGKILL to process "
                          f"group {self.pgid}")
            self.signal_group(signal.SIGKILL)
            with trio.move_on_after(KILL_WAIT):
                await self.wait()
            if self.returncode is None:
                self.log.note(f"pid {self.pid} survived SIGKILL for {KILL_WAIT:.1f} s; giving up")
                return -signal.SIGKILL
        await self._end_leftovers(table if nothing_left else None)
        await self.output.close(DRAIN_GRACE)
        self._release()
        if not nothing_left:
            table = await fresh_scan()
        with _registry_lock:
            reap_from(table)
        return self.returncode

    def _group_alive(self) -> bool:
        """Whether a live (non-zombie) process is left in the child's process group."""
        try:
            os.killpg(self.pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        # killpg(0) also succeeds on a group made only of zombies (an orphan's
        # parent may never reap it), so look at the members themselves.
        return scan().group_alive(self.pgid)

    async def _end_leftovers(self, table: Table | None) -> None:
        """SIGKILL the group and every descendant still alive after the leader is gone.

        `table`: one read since the leader is gone, if there is one.
        """
        self.signal_group(signal.SIGKILL)
        if table is None:
            table = await fresh_scan()
        left = kill(self._ours(table), signal.SIGKILL)
        if self.cgroup is not None:
            self.cgroup.kill()  # also what forked since the table was read
        if left:
            self.log.note(f"killed {len(left)} leftover process(es) of pid {self.pid}: "
                          f"{pid_list(left)}")
            with trio.move_on_after(KILL_WAIT):
                while any(alive(p) for p in left):
                    await trio.sleep(0.01)
        if self.cgroup is not None:
            with trio.move_on_after(KILL_WAIT):
                while self.cgroup.populated():
                    await trio.sleep(0.01)
        self._known.clear()

    def kill_now(self, table: Table | None = None) -> None:
        """Synchronous SIGKILL of the group and every known descendant (used at exit)."""
        table = table or scan()
        self._remember_descendants(table)
        procs = self._ours(table)
        self.signal_group(signal.SIGKILL)
        kill(procs, signal.SIGKILL)
        if self.cgroup is not None:
            self.cgroup.kill()
        if self.returncode is None and self._pidfd is not None:
            # Bounded: a SIGKILLed process is normally gone in microseconds.
            poller = select.poll()
            poller.register(self._pidfd, select.POLLIN)
            if poller.poll(1000):
                self._try_reap()
        self._release()


def _abandon(popen: spawn_mod.Child) -> None:
    """End a child just spawned that cannot be supervised (its own session: the group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)
    for pipe in (popen.stdout, popen.stderr):
        if pipe is not None:
            pipe.close()
    with contextlib.suppress(ChildProcessError, OSError):
        popen.wait(5)
