"""What this supervisor spawned, on disk, so that the next start can end a crashed run's leftovers.

If the supervisor dies by SIGKILL its children die with it (death signal),
but their own children do not. The run record (`run.json` in the data
directory) names the supervisor and every child it spawned (pid, start time,
session); at the next start `end_leftovers()` ends whatever of that is still
alive: the recorded children, every process of their sessions, and every
process that carries the old run's marker in its environment (which finds
grandchildren that setsid()ed away too). A pid is only trusted together with
its start time, so a recycled pid is never touched.

The record also holds a lock (flock on `run.lock`) for as long as the
supervisor runs: a second supervisor on the same data directory is refused
with AlreadyRunning.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import trio

from core.process import CHILD_ENV, RUN_ID

#: psutil start times have clock-tick resolution (10 ms); equal within this.
_SAME_START = 0.005


class AlreadyRunning(RuntimeError):
    """Another supervisor is running on the same data directory."""

    def __init__(self, pid: int | None, path: Path) -> None:
        self.pid = pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"another Control Center ({who}) is already running with the data "
                         f"directory of {path}; stop it first, or use another data_dir")


def _start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _same_process(pid: int, created: float | None) -> psutil.Process | None:
    """The live process `pid` if it is the one that started at `created`."""
    if not pid or created is None:
        return None
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - created) > _SAME_START:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _label(proc: psutil.Process) -> str:
    try:
        cmd = " ".join(proc.cmdline()) or proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        cmd = "?"
    if len(cmd) > 80:
        cmd = cmd[:77] + "..."
    return f"pid {proc.pid} ({cmd})"


class RunRecord:
    """The children of this run, on disk (atomically rewritten on every change)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = None
        me = psutil.Process()
        self._supervisor = {"pid": me.pid, "create_time": me.create_time(), "run_id": RUN_ID}
        self._children: dict[str, dict[str, Any]] = {}
        self._save_pending = False

    # -- this run -------------------------------------------------------------

    def add(self, component_id: str, pid: int) -> None:
        """Record a child just spawned (its pid, start time and session)."""
        created = _start_time(pid)
        if created is None:
            return  # already gone: nothing to end later
        try:
            sid = os.getsid(pid)
        except (ProcessLookupError, PermissionError):
            sid = pid
        self._children[str(pid)] = {"component": component_id, "create_time": created,
                                    "sid": sid}
        self._save_soon()

    def remove(self, pid: int) -> None:
        """Forget a child that was stopped or has exited."""
        if self._children.pop(str(pid), None) is not None:
            self._save_soon()

    def _save_soon(self) -> None:
        """Save now, or within trio once the current batch of tasks has run.

        1,000 components starting at once would rewrite a record of up to 1,000
        children 1,000 times (about a second of the event loop); deferred to
        the end of the loop's current batch, the spawns of a batch share one
        write. A child started in that window (well under a millisecond) and
        not yet written down is still found after a crash by its marker.
        """
        try:
            token = trio.lowlevel.current_trio_token()
        except RuntimeError:
            self._save()
            return
        if not self._save_pending:
            self._save_pending = True
            token.run_sync_soon(self._flush)

    def _flush(self) -> None:
        self._save_pending = False
        self._save()

    def _save(self) -> None:
        doc = {"supervisor": self._supervisor, "children": self._children}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(doc, separators=(",", ":")))
            # Atomic: a crash leaves the old record or the new one, never half of one.
            os.replace(tmp, self.path)
        except OSError:
            # A full disk must not stop a component from starting; the record is
            # a safety net, not a requirement.
            with contextlib.suppress(OSError):
                tmp.unlink()

    def close(self) -> None:
        """Clear the record and release the lock (at a clean exit)."""
        self._children.clear()
        self._save()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        fd, self._lock_fd = getattr(self, "_lock_fd", None), None
        if fd is not None:
            os.close(fd)

    # -- the previous run -----------------------------------------------------

    def _lock(self) -> bool:
        """Take the data directory's lock; False if the file system cannot lock."""
        lock_path = self.path.with_name(self.path.stem + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self._read().get("supervisor", {}).get("pid")
            raise AlreadyRunning(holder if isinstance(holder, int) else None,
                                 self.path.parent) from None
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def _read(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def end_leftovers(self, *, timeout: float = 5.0) -> list[str]:
        """End what a previous run left alive; returns one line per process ended.

        Raises AlreadyRunning if another supervisor holds this data directory.
        """
        locked = self._lock_fd is not None or self._lock()
        doc = self._read()
        previous = doc.get("supervisor") or {}
        if not locked and previous.get("pid") != os.getpid() and _same_process(
                previous.get("pid", 0), previous.get("create_time")):
            # No lock to go by (e.g. a network file system): the recorded
            # supervisor is still the same live process.
            raise AlreadyRunning(previous["pid"], self.path.parent)
        targets = self._find(doc)
        lines = self._end(targets, timeout)
        self._children.clear()
        self._save()
        return lines

    def _find(self, doc: dict[str, Any]) -> dict[int, tuple[psutil.Process, str]]:
        """The live processes of the previous run, each with why it is one."""
        found: dict[int, tuple[psutil.Process, str]] = {}
        if (doc.get("supervisor") or {}).get("run_id") == RUN_ID:
            # Written by this very process (an earlier supervisor object in it):
            # nothing of that run crashed, and what lives of it may be in use.
            return found
        sessions: dict[int, str] = {}
        children = doc.get("children")
        for pid_text, rec in (children.items() if isinstance(children, dict) else ()):
            if not isinstance(rec, dict) or not pid_text.isdigit():
                continue
            component = rec.get("component", "?")
            proc = _same_process(int(pid_text), rec.get("create_time"))
            if proc is not None:
                found[proc.pid] = (proc, f"component {component!r}")
            sid = rec.get("sid")
            if isinstance(sid, int) and sid > 1:
                # A session id is its leader's pid, which the kernel does not hand
                # out again while the session has members; so if that pid now names
                # a process that started later, the old session is empty and this
                # one is someone else's.
                now = _start_time(sid)
                if (sid == int(pid_text) and now is not None
                        and abs(now - (rec.get("create_time") or 0)) > _SAME_START):
                    continue
                if sid != os.getsid(0):  # never our own session (our shell's)
                    sessions[sid] = component
        run_id = (doc.get("supervisor") or {}).get("run_id")
        skip = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
        for proc in psutil.process_iter():
            if proc.pid in found or proc.pid in skip:
                continue
            try:
                sid = os.getsid(proc.pid)
            except (ProcessLookupError, PermissionError):
                continue
            if sid in sessions:
                found[proc.pid] = (proc, f"session of component {sessions[sid]!r}")
            elif run_id and proc.uids().real == os.getuid():
                with contextlib.suppress(psutil.Error, OSError):
                    marker = proc.environ().get(CHILD_ENV, "")
                    if marker.startswith(f"{run_id}/"):
                        found[proc.pid] = (proc, "started by the previous run")
        return {pid: t for pid, t in found.items() if _alive(t[0])}

    def _end(self, targets: dict[int, tuple[psutil.Process, str]], timeout: float) -> list[str]:
        if not targets:
            return []
        labels = {pid: f"{_label(proc)}, {why}" for pid, (proc, why) in targets.items()}
        for proc, _ in targets.values():
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGTERM)
        left = _wait_gone([p for p, _ in targets.values()], timeout)
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
        still = {p.pid for p in _wait_gone(left, 2.0)}
        killed = {p.pid for p in left}
        lines = []
        for pid, label in labels.items():
            if pid in still:
                lines.append(f"{label}: survived SIGKILL")
            elif pid in killed:
                lines.append(f"{label}: killed (SIGKILL after {timeout:g} s)")
            else:
                lines.append(f"{label}: ended (SIGTERM)")
        return lines


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Poll until every process is gone (or a zombie); returns those still alive."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in procs if _alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)
