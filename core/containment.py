"""How components are contained: a cgroup each (core.cgroup) where allowed, else process groups.

One Containment per supervisor. It hands each run its cgroup, reads the
figures of each component's whole tree, keeps the memory_max guard (restart
after MEMORY_PROBES probes in a row above the limit: PM2's
max_memory_restart, superlance's memmon) and says once in the log what it
cannot do here (no cgroups, or no kernel limits).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from core.cgroup import Group, Tree, open_tree, rss_bytes, usage_usec
from core.component import exit_text
from core.kept import KeptFiles
from core.proctable import descendant_pids, scan
from core.snapshot import ProcessStats, SystemStats, cpu_percent
from core.spawn import SpawnError

if TYPE_CHECKING:
    from core.config import ComponentConfig

log = logging.getLogger("control_center")

#: Probes (ticks) in a row above memory_max before the restart.
MEMORY_PROBES = 2
#: How many ticks in a row an idle leader alone in its cgroup is not read.
SKIP_READS = 15
CGROUP = "cgroup"
PROCESS_GROUP = "process-group"


def size_text(size: int) -> str:
    """Bytes as the config spells them: 536870912 -> "512M"."""
    for unit, scale in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size / 2**20:.1f}M"


class Containment:
    """Cgroups for the components (`tree`), or none and why (`reason`)."""

    def __init__(self, tree: Tree | None = None, reason: str = "not asked for") -> None:
        self.tree = tree
        #: Why there is no tree, or why its cpu/memory controllers are missing ("" if not).
        self.reason = reason
        self.kind = CGROUP if tree is not None else PROCESS_GROUP
        self._warned: set[str] = set()
        self._cpu: dict[str, tuple[int, float]] = {}
        self._over: dict[str, int] = {}
        self._oom_base: dict[str, int] = {}
        # The figures' cgroups and files, kept from tick to tick.
        self._groups: dict[str, Group] = {}
        self._files = KeptFiles()
        # cid -> (the texts last read, the figures they give when unchanged,
        # how many ticks in a row they were taken without reading: see figures())
        self._last: dict[str, tuple[tuple[bytes | None, bytes | None, float], ProcessStats,
                                    int]] = {}

    @classmethod
    def open(cls, instance: str, *, enabled: bool) -> Containment:
        """Cgroups under this process's own, if it can make them; logs once why not."""
        if not enabled:
            reason = "[server] cgroups = false"
            tree = None
        else:
            tree, reason = open_tree(f"control-center-{instance}")
        if tree is None:
            log.log(logging.INFO if not enabled else logging.WARNING,
                    "containment: process groups (cgroups are not used: %s)", reason)
        else:
            log.info("containment: a cgroup per component under %s", tree.base)
        return cls(tree, reason)

    # -- limits ----------------------------------------------------------------

    def enforced(self, controller: str) -> bool:
        return self.tree is not None and controller in self.tree.controllers

    def limits(self, cfg: ComponentConfig) -> dict[str, Any]:
        """The component's limits as in the snapshot ({} without any)."""
        out: dict[str, Any] = {}
        if cfg.memory_max is not None:
            out["memory_max_mb"] = round(cfg.memory_max / 2**20, 1)
            out["memory_max_by"] = "kernel" if self.enforced("memory") else "supervisor"
        if cfg.cpu_max is not None:
            out["cpu_max"] = cfg.cpu_max
            out["cpu_max_by"] = "kernel" if self.enforced("cpu") else None
        return out

    def _warn_limits(self, cfg: ComponentConfig) -> None:
        why = self.reason or "no cgroups"
        if cfg.memory_max is not None and not self.enforced("memory") and (
                "memory" not in self._warned):
            self._warned.add("memory")
            log.warning("memory_max: the kernel limit (memory.max) is not available (%s); "
                        "the supervisor restarts a component above it by its own measure",
                        why)
        if cfg.cpu_max is not None and not self.enforced("cpu") and "cpu" not in self._warned:
            self._warned.add("cpu")
            log.warning("cpu_max: not enforced, the kernel limit (cpu.max) is not available "
                        "(%s)", why)

    # -- runs ------------------------------------------------------------------

    def new_run(self, cfg: ComponentConfig) -> Group | None:
        """A fresh cgroup for the next run of `cfg` (None: process groups); SpawnError."""
        self._warn_limits(cfg)
        self._over.pop(cfg.id, None)
        if self.tree is None:
            return None
        try:
            leaf = self.tree.new_run(cfg.id, cfg.memory_max, cfg.cpu_max)
        except OSError as exc:
            raise SpawnError(f"cannot prepare the cgroup of {cfg.id} under {self.tree.base}: "
                             f"{exc.strerror or exc}") from None
        if self.enforced("memory"):
            self._oom_base[cfg.id] = self.tree.group(cfg.id).oom_kills()
        return leaf

    def exit_text(self, cid: str, code: int | None) -> str:
        """How a run ended, "out of memory" included when the kernel's OOM killer did it."""
        text = exit_text(code)
        if self.tree is not None and cid in self._oom_base:
            if self.tree.group(cid).oom_kills() > self._oom_base[cid]:
                text += " (out of memory: the kernel's OOM killer, at memory_max)"
        return text

    def remove(self, cid: str) -> None:
        """A component removed (reload): end and remove its cgroup."""
        self._cpu.pop(cid, None)
        self._over.pop(cid, None)
        self._oom_base.pop(cid, None)
        self._groups.pop(cid, None)
        if self.tree is not None:
            self.tree.current.pop(cid, None)
        if self.tree is not None and not self.tree.group(cid).end():
            log.warning("the cgroup of %s could not be removed", cid)

    def close(self) -> None:
        """At shutdown: every cgroup left is ended and removed."""
        self._files.close()
        if self.tree is not None:
            self.tree.close()

    # -- figures ---------------------------------------------------------------

    def figures(self, rows: Iterable[tuple[str, int, int | None]],
                stats: SystemStats) -> SystemStats:
        """`stats` with each component's figures counted over its whole tree.

        rows: (component id, leader pid, memory_max). In a cgroup: CPU from
        cpu.stat, memory from memory.current (with the memory controller) or
        the resident memory of its processes. Without cgroups only memory, and
        only for a component with memory_max (its descendants in /proc).

        A leader that was alone in its cgroup at the last read and did not run
        since (`stats.idle`) is still alone (only a process of the cgroup can
        fork into it) and its cgroup used no CPU: its figures are the last
        ones, with no read, up to SKIP_READS ticks in a row (a read then
        catches what a root process may have moved into the cgroup meanwhile).
        """
        now = time.monotonic()
        tree = self.tree
        controller = self.enforced("memory")
        if stats.quiet and tree is not None and not controller:
            quiet = self._quiet(rows, stats, now)
            if quiet is not None:
                return quiet
        procs = dict(stats.processes)
        table = None
        last, self._last = self._last, {}
        for cid, pid, memory_max in rows:
            seen = procs.get(pid)
            if seen is None:
                continue
            if tree is not None:
                group = self._groups.get(cid)
                if group is None:
                    group = self._groups[cid] = tree.group(cid)
                run = tree.current.get(cid)
                before = last.get(cid)
                alone = b"%d\n" % pid  # the run's cgroup.procs with the leader alone
                if (before is not None and pid in stats.idle and before[2] < SKIP_READS
                        and not controller and before[0][1] == alone
                        and before[0][2] == seen.memory_mb and cid in self._cpu):
                    group.keep_figure_files(controller, run, self._files)
                    procs[pid] = self._unchanged(cid, before, before[2] + 1, now)
                    continue
                cpu_text, memory_text = group.figure_texts(controller, run, self._files)
                key = (cpu_text, memory_text, seen.memory_mb)
                if (before is not None and before[0] == key and cid in self._cpu
                        and (controller or memory_text == alone)):
                    # Nothing changed since the last tick: no CPU used, the same
                    # memory (memory.current, or the leader alone in its cgroup:
                    # its own stat text is unchanged; other processes' memory
                    # can shrink without a text here changing).
                    procs[pid] = self._unchanged(cid, before, 0, now)
                    continue
                usec = None
                with contextlib.suppress(ValueError):
                    usec = usage_usec(cpu_text) if cpu_text is not None else None
                cpu = seen.cpu_percent
                if usec is not None:
                    previous = self._cpu.get(cid)
                    cpu = 0.0
                    if previous is not None and now > previous[1] and usec >= previous[0]:
                        cpu = cpu_percent((usec - previous[0]) / 1e6, now - previous[1])
                    self._cpu[cid] = (usec, now)
                memory = round(group.memory_bytes(controller, memory_text,
                                                  (pid, round(seen.memory_mb * 2**20)),
                                                  run) / 2**20, 1)
                procs[pid] = ProcessStats(cpu_percent=cpu, memory_mb=memory)
                if usec is not None:
                    self._last[cid] = (key, ProcessStats(cpu_percent=0.0, memory_mb=memory), 0)
            elif memory_max is not None:
                table = table or scan()
                pids = [pid, *descendant_pids(pid, table.parents)]
                procs[pid] = ProcessStats(cpu_percent=seen.cpu_percent,
                                          memory_mb=round(rss_bytes(pids) / 2**20, 1))
        if tree is not None:
            self._files.sweep()
        return SystemStats(cpu_percent=stats.cpu_percent,
                           memory_percent=stats.memory_percent, processes=procs)

    def _quiet(self, rows: Iterable[tuple[str, int, int | None]], stats: SystemStats,
               now: float) -> SystemStats | None:
        """The last figures of every row again, with no read, when no process of
        the tree ran since the last tick (`stats.quiet`) and each row is within
        SKIP_READS; else None. Its files stay open (no sweep) for the next read."""
        last = self._last
        reused = []
        for cid, pid, _ in rows:
            before = last.get(cid)
            if (before is None or before[2] >= SKIP_READS or cid not in self._cpu
                    or pid not in stats.processes):
                return None
            reused.append((cid, pid, before))
        self._last = {}
        procs = dict(stats.processes)
        for cid, pid, before in reused:
            procs[pid] = self._unchanged(cid, before, before[2] + 1, now)
        return SystemStats(cpu_percent=stats.cpu_percent,
                           memory_percent=stats.memory_percent, processes=procs)

    def _unchanged(self, cid: str,
                   before: tuple[tuple[bytes | None, bytes | None, float], ProcessStats, int],
                   skipped: int, now: float) -> ProcessStats:
        """The last figures of `cid` again (no CPU used since the last tick); `skipped`:
        the ticks in a row taken without a read."""
        self._cpu[cid] = (self._cpu[cid][0], now)
        self._last[cid] = (before[0], before[1], skipped)
        return before[1]

    def memory_over(self, cid: str, memory_mb: float | None, memory_max: int) -> str | None:
        """The reason to restart, once the tree stayed above memory_max MEMORY_PROBES times."""
        if memory_mb is None or memory_mb * 2**20 <= memory_max:
            self._over.pop(cid, None)
            return None
        count = self._over[cid] = self._over.get(cid, 0) + 1
        if count < MEMORY_PROBES:
            return None
        self._over.pop(cid, None)
        return (f"memory {memory_mb:.1f} MB above memory_max = {size_text(memory_max)} for "
                f"{count} probes in a row: restarted")
