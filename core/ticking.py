"""The snapshot tick: probes and the process table ahead of each tick, then one
snapshot of every component to the hub, every interval, on schedule.

A mixin of core.supervisor.Supervisor, which owns the components, the runner
and the hub these use.
"""

from __future__ import annotations

import errno
import logging
import time
from typing import TYPE_CHECKING, Any

import trio

from core.component import Component
from core.process import reap_orphans
from core.snapshot import StatsReader, SystemStats, build_document
from core.states import ComponentState

if TYPE_CHECKING:
    from core.config import Config
    from core.hub import Hub
    from core.runner import Runner

log = logging.getLogger("control_center")

S = ComponentState
#: Up to this many children the tick reads their figures on the event loop
#: (about 20 us each); more go to a worker thread.
INLINE_STATS = 100
#: The snapshot is built this many components per event-loop step.
PUBLISH_CHUNK = 250
#: Out of descriptors or memory: the tick goes on with the last figures.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


class Ticking:
    """Supervisor's tick (see the module's docstring)."""

    config: Config
    hub: Hub | None
    tick_count: int
    _components: dict[str, Component]
    _runner: Runner
    _stats: StatsReader
    _last_stats: SystemStats
    _resource_warned: float

    def _iso(self, ts: float) -> str:
        raise NotImplementedError

    def _describe(self, comp: Component) -> dict[str, Any]:
        raise NotImplementedError

    async def _tick_loop(self, next_at: float) -> None:
        """A snapshot every interval, on schedule.

        The measuring (probes, the process table) starts ahead of each tick
        by its own bound, so a slow probe or a busy machine makes the figures
        a little older, never the snapshot late: clients get one every
        interval, as the protocol says.
        """
        interval = self.config.server.interval
        while True:
            # With no probe to wait for, the process table is read right at
            # the tick: one wake-up a tick instead of two.
            ahead = self._measure_bound() if self._probing() else 0.0
            await trio.sleep_until(next_at - ahead)
            stats = await self._measure()
            if ahead:
                await trio.sleep_until(next_at)
            await self._publish(stats)
            next_at += interval
            now = trio.current_time()
            if next_at < now:  # a tick took longer than an interval: do not burst
                next_at = now + interval

    async def tick(self) -> dict[str, Any]:
        """One probe pass and one snapshot, published to the hub at once."""
        return await self._publish(await self._measure())

    def _probing(self) -> bool:
        """Whether some running component has probes for the next pass."""
        return any(c.probes and c.pid is not None for c in self._components.values())

    def _measure_bound(self) -> float:
        """How long a probe pass may wait for its probes."""
        return min(self.config.server.interval * 0.5,
                   max((c.cfg.probe_timeout for c in self._components.values()), default=1.0))

    async def _measure(self) -> SystemStats:
        """Probe the running components (bounded) and read the process table."""
        done: list[trio.Event] = []
        nursery = self._runner.nursery
        assert nursery is not None
        pids = []
        trees = []  # whose figures count the whole tree (core.containment)
        contained = self._runner.containment.tree is not None
        for comp in self._components.values():
            pid = comp.pid
            if pid is None:
                continue
            pids.append(pid)
            if contained or comp.cfg.memory_max is not None:
                trees.append((comp.cfg.id, pid, comp.cfg.memory_max))
            if comp.probes and comp.probe_busy_since is None:  # else: still within its timeout
                ev = trio.Event()
                done.append(ev)
                nursery.start_soon(self._runner.probe, comp, ev)
        if len(pids) <= INLINE_STATS:
            # Two /proc reads a child: cheaper here than the hop to a thread and back.
            stats = self._read_stats(pids, trees)
        else:
            stats = await trio.to_thread.run_sync(self._read_stats, pids, trees)
        if done:
            with trio.move_on_after(self._measure_bound()):
                for ev in done:
                    await ev.wait()
        return stats

    async def _publish(self, stats: SystemStats) -> dict[str, Any]:
        """The snapshot of the current state, with `stats`, to the hub.

        Built PUBLISH_CHUNK components per event-loop step, so that 1,000 do
        not hold the loop for one long step. Each entry is the component as
        of its own step, and its last_updated is this snapshot's from then on:
        a REST answer built in between is newer than the entry it follows and
        older than the one it precedes, as the dashboard expects.
        """
        now = time.time()
        mono = time.monotonic()
        stamp = self._iso(now)
        procs = stats.processes
        described = {}
        metrics = []
        for n, (cid, comp) in enumerate(list(self._components.items()), 1):
            if n % PUBLISH_CHUNK == 0:
                await trio.lowlevel.checkpoint()
            if comp.removed:  # by a reload meanwhile
                continue
            pid = comp.pid
            ps = procs.get(pid) if pid is not None else None
            if ps is None:
                comp.cpu_percent = comp.memory_mb = None
            else:
                comp.cpu_percent, comp.memory_mb = ps.cpu_percent, ps.memory_mb
                if comp.cfg.memory_max is not None:
                    self._memory_guard(comp)
            if pid is not None and comp.metrics:
                metrics.append(comp.metrics)
            comp.last_updated = now
            described[cid] = comp.describe(mono, stamp)
        doc = build_document(described, stats, metrics, now)
        self.tick_count += 1
        if self.hub is not None:
            self.hub.publish(doc)
        return doc

    def _memory_guard(self, comp: Component) -> None:
        assert comp.cfg.memory_max is not None
        reason = self._runner.containment.memory_over(comp.cfg.id, comp.memory_mb,
                                                      comp.cfg.memory_max)
        if reason is not None and comp.state == S.RUNNING:
            self._runner.restart_for(comp, reason)

    def _read_stats(self, pids: list[int],
                    trees: list[tuple[str, int, int | None]] | None = None) -> SystemStats:
        # Adopted orphans (we are a subreaper) are reaped here; the pass over
        # /proc this takes happens only when some child of ours is a zombie.
        try:
            reap_orphans()
            # Every child is in the tree of cgroups, if there is one: while its
            # cpu.stat reads the same, none of them ran, and none is read.
            tree = self._runner.containment.tree
            stats = self._stats.read(pids, tree.cpu_stat if tree is not None else None)
            if trees:
                stats = self._runner.containment.figures(trees, stats)
        except OSError as exc:
            if exc.errno not in _RESOURCE_ERRNOS:
                raise
            # Out of descriptors or memory (EMFILE once killed the supervisor
            # here): say so, show the last figures, try again next tick.
            now = time.monotonic()
            if now - self._resource_warned > 10:
                self._resource_warned = now
                log.error("reading the process table: %s; showing the last figures and "
                          "retrying every tick", exc.strerror or exc)
            return self._last_stats
        self._last_stats = stats
        return stats

    def publish_current(self) -> dict[str, Any]:
        """Publish a snapshot of the current state at once, without probes.

        Used before the web server starts, so that its first client never
        finds the hub empty.
        """
        now = time.time()
        doc = build_document(
            {cid: self._describe(c) for cid, c in self._components.items()},
            self._stats.read([]), [], now)
        if self.hub is not None:
            self.hub.publish(doc)
        return doc
