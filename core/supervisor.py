"""The supervisor: one task per component, restart policy, the snapshot tick.

PUBLIC API (used by the web layer and the CLI; signatures are stable):

    sup = Supervisor(config, plugins, hub)
    async with trio.open_nursery() as n:
        await n.start(sup.run)          # starts autostart components in
                                        # dependency order, then ticks
    sup.config                          # the current Config (frozen)
    sup.component_ids() -> list[str]    # in config order
    sup.view(cid) -> dict               # one component as in the snapshot,
                                        # plus: plugin, restarts, exit_code,
                                        # health, next_restart_in, depends_on
                                        # raises UnknownComponent
    await sup.start(cid) -> dict        # returns view(cid) once the component
    await sup.stop(cid, wait=False)     # has left its previous state; start
    await sup.restart(cid) -> dict      # of a running one / stop of a stopped
                                        # one are no-ops; UnknownComponent
    await sup.reload() -> dict          # re-read config.path; {"added": [...],
                                        # "removed": [...], "changed": [...],
                                        # "unchanged": [...]}; ConfigError
                                        # leaves everything as it was
    sup.log(cid) -> LogTail             # the component's output (core.logs)
    await sup.shutdown()                # stop all in reverse dependency order
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from core import config as config_mod
from core import health
from core.component import Component, call_hook, describe_exc, exit_text
from core.config import ComponentConfig, Config
from core.errors import ConfigError, PluginError, ShuttingDown, UnknownComponent
from core.logs import LogTail
from core.model import ComponentInfo, Launch
from core.plugins import PluginManager
from core.process import ChildProcess, SpawnError, reap_orphans
from core.snapshot import StatsReader, SystemStats, build_document, iso_utc
from core.states import ComponentState, check_transition

if TYPE_CHECKING:
    from core.hub import Hub
    from core.leftovers import RunRecord

log = logging.getLogger("control_center")

S = ComponentState
#: While a component starts, probe this often until it first reports healthy.
STARTUP_PROBE_INTERVAL = 0.1
#: Probes running at once in worker threads, all components together.
PROBE_THREADS = 16
#: How long a reload may take to read and validate config.toml.
CONFIG_LOAD_TIMEOUT = 5.0


class Supervisor:
    """Runs every component's task and the snapshot tick."""

    def __init__(self, config: Config, plugins: PluginManager, hub: Hub | None = None, *,
                 record: RunRecord | None = None) -> None:
        self.config = config
        self.plugins = plugins
        self.hub = hub
        self.record = record
        self._components: dict[str, Component] = {}
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._probe_slots = trio.CapacityLimiter(PROBE_THREADS)
        self._stats = StatsReader()
        self._listeners: list[Callable[[str, ComponentState, ComponentState], None]] = []
        self._reload_lock = trio.Lock()
        self._shutting_down = False
        self.tick_count = 0
        self._iso_cache: tuple[float, str] = (0.0, iso_utc(0.0))
        for cid, cfg in config.components.items():
            self._components[cid] = self._new_component(cfg)

    # -- public API ----------------------------------------------------------

    def component_ids(self) -> list[str]:
        return list(self._components)

    def view(self, cid: str) -> dict[str, Any]:
        return self._describe(self._get(cid))

    def log(self, cid: str) -> LogTail:
        return self._get(cid).log

    def add_listener(self, fn: Callable[[str, ComponentState, ComponentState], None]) -> None:
        """fn(component_id, old, new) is called on every state change, in order."""
        self._listeners.append(fn)

    async def start(self, cid: str) -> dict[str, Any]:
        comp = self._get(cid)
        if self._shutting_down:
            # A start (or restart) that arrives during shutdown would outlive it
            # and keep the supervisor from ever exiting: refuse it, unchanged.
            comp.log.note("start refused: the supervisor is shutting down")
            raise ShuttingDown(cid)
        for dep in self._dependencies(cid):
            self._want(self._components[dep], True)
        before = comp.state
        self._want(comp, True)
        if before in (S.STOPPED, S.ERROR, S.STOPPING):
            await self._wait_state(comp, lambda s: s in (S.STARTING, S.RUNNING),
                                   request=comp.requests)
        return self.view(cid)

    async def stop(self, cid: str, *, wait: bool = False) -> dict[str, Any]:
        """Returns once the component has left running (usually: "stopping");
        with `wait`, once it is stopped or in error, its process gone."""
        comp = self._get(cid)
        self._want(comp, False)
        if comp.state in (S.STARTING, S.RUNNING):
            await self._wait_state(comp, lambda s: s not in (S.STARTING, S.RUNNING),
                                   request=comp.requests)
        if wait:
            await self._wait_state(comp, lambda s: s in (S.STOPPED, S.ERROR)
                                   and comp.child is None, request=comp.requests)
        return self.view(cid)

    async def restart(self, cid: str) -> dict[str, Any]:
        comp = self._get(cid)
        if self._shutting_down:
            return await self.start(cid)  # refused there, with a note
        if comp.state in (S.RUNNING, S.STARTING) and comp.desired:
            comp.restart_requested = True
            if comp.run_scope is not None:
                comp.run_scope.cancel()
            await self._wait_state(comp, lambda s: s != S.RUNNING or comp.child is None,
                                   request=comp.requests)
            return self.view(cid)
        return await self.start(cid)

    async def reload(self) -> dict[str, list[str]]:
        """Re-read the config file; start new, stop removed, restart changed."""
        async with self._reload_lock:
            path = self.config.path
            load = functools.partial(load_guarded, path, self.plugins)
            # In a worker thread, bounded: plugins' validate_config hooks run here,
            # and one that hangs must not freeze the ticks, REST and signals.
            new: Config | None = None
            with trio.move_on_after(CONFIG_LOAD_TIMEOUT):
                new = await trio.to_thread.run_sync(load, abandon_on_cancel=True)
            if new is None:
                raise ConfigError(str(path), None, f"reading the config did not finish "
                                  f"within {CONFIG_LOAD_TIMEOUT:g} s (a plugin's "
                                  "validate_config hook hangs?); nothing changed")
            if self._shutting_down:
                raise ConfigError(str(path), None, "not reloaded: the supervisor is "
                                  "shutting down")
            old = self.config
            added = [c for c in new.components if c not in old.components]
            removed = [c for c in old.components if c not in new.components]
            changed = [c for c in new.components if c in old.components
                       and new.components[c] != old.components[c]]
            unchanged = [c for c in new.components if c in old.components and c not in changed]
            self.config = new
            # Removed ones stop dependents-first, like a shutdown.
            await self._stop_many(removed, old)
            for cid in removed:
                comp = self._components.pop(cid)
                comp.removed = True
                if comp.task_scope is not None:
                    comp.task_scope.cancel()
                comp.log.close()
            for cid in changed:
                comp = self._components[cid]
                cfg = new.components[cid]
                relaunch = not comp.cfg.same_launch(cfg)
                comp.cfg = cfg
                comp.info = self._info(cfg)
                if relaunch and comp.state in (S.RUNNING, S.STARTING):
                    await self.restart(cid)
                elif relaunch and cfg.autostart and comp.state in (S.STOPPED, S.ERROR):
                    await self.start(cid)
            for cid in added:
                comp = self._components[cid] = self._new_component(new.components[cid])
                assert self._nursery is not None
                await self._nursery.start(self._component_task, comp)
                if comp.cfg.autostart:
                    self._want(comp, True)
            self._notify()
            log.info("config reloaded: %d added, %d removed, %d changed", len(added),
                     len(removed), len(changed))
            return {"added": added, "removed": removed, "changed": changed,
                    "unchanged": unchanged}

    async def shutdown(self) -> None:
        """Stop every component, dependents before their dependencies."""
        self._shutting_down = True
        await self._stop_many(list(self._components), self.config)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Start the component tasks and autostart components, then tick forever."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for comp in self._components.values():
                await nursery.start(self._component_task, comp)
            for cid in self.config.start_order():
                comp = self._components[cid]
                if comp.cfg.autostart:
                    self._want(comp, True)
            await self.tick()
            # The next one an interval after this one, however long the
            # caller takes before the loop first runs (python -m core
            # freezes its start-up objects then: 0.3 s or more).
            first_at = trio.current_time() + self.config.server.interval
            task_status.started()
            nursery.start_soon(self._tick_loop, first_at)

    # -- the snapshot tick -----------------------------------------------------

    async def _tick_loop(self, next_at: float) -> None:
        """A snapshot every interval, on schedule.

        The measuring (probes, the process table) starts ahead of each tick
        by its own bound, so a slow probe or a busy machine makes the figures
        a little older, never the snapshot late: clients get one every
        interval, as the protocol says.
        """
        interval = self.config.server.interval
        while True:
            await trio.sleep_until(next_at - self._measure_bound())
            stats = await self._measure()
            await trio.sleep_until(next_at)
            self._publish(stats)
            next_at += interval
            now = trio.current_time()
            if next_at < now:  # a tick took longer than an interval: do not burst
                next_at = now + interval

    async def tick(self) -> dict[str, Any]:
        """One probe pass and one snapshot, published to the hub at once."""
        return self._publish(await self._measure())

    def _measure_bound(self) -> float:
        """How long a probe pass may wait for its probes."""
        return min(self.config.server.interval * 0.5,
                   max((c.cfg.probe_timeout for c in self._components.values()), default=1.0))

    async def _measure(self) -> SystemStats:
        """Probe the running components (bounded) and read the process table."""
        deadline = self._measure_bound()
        running = [c for c in self._components.values() if c.pid is not None]
        done: list[trio.Event] = []
        assert self._nursery is not None
        for comp in running:
            if comp.probe_busy_since is not None:
                continue  # the last one is still within its timeout
            if not comp.probes:
                continue
            ev = trio.Event()
            done.append(ev)
            self._nursery.start_soon(self._probe, comp, ev)
        pids = [c.pid for c in running if c.pid is not None]
        stats = await trio.to_thread.run_sync(self._read_stats, pids)
        with trio.move_on_after(deadline):
            for ev in done:
                await ev.wait()
        return stats

    def _publish(self, stats: SystemStats) -> dict[str, Any]:
        """The snapshot of the current state, with `stats`, to the hub."""
        comps = list(self._components.values())
        now = time.time()
        for comp in comps:
            pid = comp.pid
            ps = stats.processes.get(pid) if pid is not None else None
            comp.cpu_percent = ps.cpu_percent if ps else None
            comp.memory_mb = ps.memory_mb if ps else None
            comp.last_updated = now
        doc = build_document(
            {c.cfg.id: self._describe(c) for c in comps},
            stats,
            [c.metrics for c in comps if c.pid is not None and c.metrics],
            now,
        )
        self.tick_count += 1
        if self.hub is not None:
            self.hub.publish(doc)
        return doc

    def _read_stats(self, pids: list[int]) -> SystemStats:
        # Adopted orphans (we are a subreaper) are reaped here, off the loop.
        reap_orphans()
        return self._stats.read(pids)

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

    async def _probe(self, comp: Component, done: trio.Event) -> None:
        pid = comp.pid
        if pid is None:
            done.set()
            return
        comp.probe_busy_since = time.monotonic()
        was = comp.health
        try:
            async with self._probe_slots:
                result = await call_hook(self.plugins, comp, "probe",
                                         timeout=comp.cfg.probe_timeout,
                                         limiter=comp.probe_limiter, pid=pid)
            if comp.apply_probe(pid, result):
                self._notify()
        except Exception as exc:
            if comp.pid == pid:
                comp.health = "unhealthy"
                # A PluginError already names the plugin and the hook.
                comp.probe_error = str(exc) if isinstance(exc, PluginError) else (
                    f"probe failed: {describe_exc(exc)}")
        finally:
            comp.probe_busy_since = None
            if comp.pid == pid:
                health.note_change(comp, was)
            done.set()

    # -- one task per component ------------------------------------------------

    async def _component_task(self, comp: Component, *,
                              task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            comp.task_scope = scope
            task_status.started()
            while True:
                while not comp.desired:
                    await comp.wake.wait()
                with trio.CancelScope() as run_scope:
                    comp.run_scope = run_scope
                    try:
                        await self._supervise(comp)
                    finally:
                        with trio.CancelScope(shield=True):
                            await self._stop_child(comp)
                comp.run_scope = None
                if comp.restart_requested:
                    comp.restart_requested = False
                    comp.desired = True
                elif comp.state in (S.STARTING, S.RUNNING, S.STOPPING):
                    # Stopped on request while starting/backing off.
                    self._set_state(comp, S.STOPPED, "stopped on request")

    async def _supervise(self, comp: Component) -> None:
        """Start, watch, and restart per policy until stopped or given up."""
        cfg = comp.cfg
        failures = 0
        if comp.state != S.STARTING:
            self._set_state(comp, S.STARTING, "start requested")  # STOPPED/ERROR -> STARTING
        comp.error = None
        while True:
            cfg = comp.cfg
            await self._wait_dependencies(comp)
            comp.next_restart_at = None
            began = time.monotonic()
            try:
                child = await self._spawn(comp)
            except (SpawnError, PluginError) as exc:
                comp.error = str(exc)
                comp.log.note(f"start failed: {exc}")
                quick = True
                code: int | None = None
            else:
                code = await self._watch(comp, child)
                quick = time.monotonic() - began < cfg.stable_after
            # The child is gone (or never came): decide per the restart policy.
            comp.exit_code = code
            policy = cfg.restart
            clean = code == 0
            if policy == "never" or (policy == "on-failure" and clean):
                comp.desired = False
                if clean:
                    # RUNNING -> STOPPED: exited by itself with status 0
                    self._set_state(comp, S.STOPPED, "exited with status 0")
                else:
                    comp.error = comp.error or exit_text(code)
                    # RUNNING/STARTING -> ERROR: failed and the policy does not restart
                    self._set_state(comp, S.ERROR, comp.error)
                return
            if quick:
                failures += 1
            else:
                failures = 0
            if failures >= cfg.max_failures:
                comp.desired = False
                comp.error = (f"gave up after {failures} quick failures in a row (last: "
                              f"{comp.error or exit_text(code)}); start it again to retry")
                # STARTING/RUNNING -> ERROR: too many quick failures
                self._set_state(comp, S.ERROR, comp.error)
                return
            delay = 0.0 if failures == 0 else min(
                cfg.backoff_max, cfg.backoff_initial * cfg.backoff_factor ** (failures - 1))
            if code is not None:
                comp.error = exit_text(code)
            comp.restarts += 1
            # RUNNING -> STARTING: died; the policy restarts it after `delay`
            why = exit_text(code) if code is not None else "start failed"
            self._set_state(comp, S.STARTING, f"{why}; restarting in {delay:.2f} s")
            if delay > 0:
                comp.next_restart_at = time.monotonic() + delay
                self._notify()
                await trio.sleep(delay)

    async def _spawn(self, comp: Component) -> ChildProcess:
        try:
            comp.info.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            # A start failure of this component (restart policy applies), not a
            # crash of the supervisor.
            raise SpawnError(f"cannot create the data directory {comp.info.data_dir}: "
                             f"{exc.strerror or exc}") from None
        launch = await call_hook(self.plugins, comp, "start", timeout=comp.cfg.start_timeout)
        if not isinstance(launch, Launch):
            raise PluginError(f"plugin {comp.cfg.plugin!r} start hook returned "
                              f"{type(launch).__name__}, expected core.Launch")
        assert self._nursery is not None
        cwd = launch.cwd or str(self.config.config_dir)
        try:
            child = await ChildProcess.spawn(self._nursery, launch.argv, cwd=cwd,
                                             env=dict(launch.env), log=comp.log)
        except (TypeError, ValueError) as exc:
            # Popen refuses it before any process exists (a non-string env
            # value, a NUL byte): the plugin's mistake, this component's failure.
            raise PluginError(f"plugin {comp.cfg.plugin!r} start hook returned a Launch that "
                              f"cannot be run: {exc}") from None
        comp.child = child
        comp.probes = launch.probe and self.plugins.implements(comp.cfg.plugin, "probe")
        if self.record is not None:
            self.record.add(comp.cfg.id, child.pid)
        return child

    async def _watch(self, comp: Component, child: ChildProcess) -> int:
        """RUNNING until the child exits; probes quickly until it is first healthy."""
        comp.child = child
        comp.started_at = time.monotonic()
        comp.exit_code = None
        comp.error = None
        comp.probe_error = None
        comp.metrics = {}
        has_probe = comp.probes
        comp.health = "starting" if has_probe else "healthy"
        # STARTING -> RUNNING: the process exists
        self._set_state(comp, S.RUNNING, f"started pid {child.pid}")
        async with trio.open_nursery() as nursery:
            if has_probe:
                nursery.start_soon(self._startup_probes, comp)
            code = await child.wait()
            nursery.cancel_scope.cancel()
        if self.record is not None:
            self.record.remove(child.pid)
        comp.log.note(exit_text(code))
        return code

    async def _startup_probes(self, comp: Component) -> None:
        deadline = trio.current_time() + comp.cfg.start_timeout
        while comp.health == "starting" and trio.current_time() < deadline:
            if comp.probe_busy_since is None:
                ev = trio.Event()
                await self._probe(comp, ev)
                if comp.health == "healthy":
                    return
                # Not healthy yet is normal while starting: keep "starting".
                comp.health = "starting"
            await trio.sleep(STARTUP_PROBE_INTERVAL)
        if comp.health == "starting":
            comp.health = "unhealthy"
            comp.probe_error = (comp.probe_error or
                                f"not healthy {comp.cfg.start_timeout:g} s after start")
            health.note_change(comp, "starting", start_timed_out=True)
            self._notify()

    async def _stop_child(self, comp: Component) -> None:
        """Plugin stop hook, then signal, wait, SIGKILL: bounded by stop_timeout."""
        child = comp.child
        if child is None or child.returncode is not None:
            comp.child = None
            return
        cfg = comp.cfg
        if comp.state != S.STOPPING:
            self._set_state(comp, S.STOPPING, "stop requested")  # RUNNING -> STOPPING
        began = time.monotonic()
        if self.plugins.implements(cfg.plugin, "stop"):
            try:
                with trio.move_on_after(cfg.stop_timeout / 2):
                    await call_hook(self.plugins, comp, "stop", timeout=cfg.stop_timeout / 2,
                                    pid=child.pid, limiter=comp.stop_limiter)
            except Exception as exc:
                comp.log.note(f"stop hook failed: {describe_exc(exc)}")
        remaining = max(0.1, cfg.stop_timeout - (time.monotonic() - began))
        code = await child.stop(cfg.stop_signal, remaining)
        if self.record is not None:
            self.record.remove(child.pid)
        comp.exit_code = code
        comp.child = None
        comp.health = None
        comp.metrics = {}
        if comp.restart_requested:
            comp.restarts += 1
        # STOPPING -> STOPPED: stopped on request
        self._set_state(comp, S.STOPPED, f"stopped ({exit_text(code)})")

    async def _wait_dependencies(self, comp: Component) -> None:
        deps = comp.cfg.depends_on
        if not deps:
            return
        while True:
            waiting = []
            for dep in deps:
                other = self._components.get(dep)
                if other is None:
                    continue
                if not (other.state == S.RUNNING and other.health == "healthy"):
                    detail = other.state.value if other.state != S.RUNNING else (
                        f"running, {other.health}")
                    waiting.append(f"{dep} ({detail})")
            if not waiting:
                comp.error = None
                return
            text = "waiting for " + ", ".join(waiting)
            if comp.error != text:
                comp.error = text
                comp.log.note(text)
            changed = self._changed
            await changed.wait()

    # -- helpers -----------------------------------------------------------

    def _want(self, comp: Component, desired: bool) -> None:
        comp.desired = desired
        comp.requests += 1
        if not desired:
            comp.restart_requested = False
            if comp.run_scope is not None:
                comp.run_scope.cancel()
        comp.poke()
        self._notify()  # wakes callers whose request this one supersedes

    async def _wait_state(self, comp: Component, pred: Callable[[ComponentState], bool], *,
                          request: int | None = None) -> None:
        """Until pred(state); or, given `request`, until a later request supersedes it.

        Without that escape a stop answered by a start that came right after it
        (or the reverse) would wait for a state that never comes.
        """
        while not pred(comp.state):
            if request is not None and comp.requests != request:
                return
            await self._changed.wait()

    async def _stop_many(self, cids: list[str], config: Config) -> None:
        """Stop components in waves: nothing stops before what depends on it."""
        pending = set(cids)
        while pending:
            wave = [c for c in pending if not any(
                c in config.components[o].depends_on for o in pending
                if o in config.components and o != c)]
            if not wave:  # cannot happen with a validated config; stop the rest
                wave = list(pending)
            async with trio.open_nursery() as nursery:
                for cid in wave:
                    nursery.start_soon(self._stop_and_wait, cid)
            pending -= set(wave)

    async def _stop_and_wait(self, cid: str) -> None:
        comp = self._components.get(cid)
        if comp is None:
            return
        self._want(comp, False)
        await self._wait_state(comp, lambda s: s in (S.STOPPED, S.ERROR) and comp.child is None)

    def _set_state(self, comp: Component, new: ComponentState, reason: str) -> None:
        """The one place a component's state changes."""
        old = comp.state
        if old == new:
            comp.log.note(reason)
            self._notify()
            return
        check_transition(comp.cfg.id, old, new)
        comp.state = new
        comp.log.note(f"{old.value} -> {new.value}: {reason}")
        log.info("%s: %s -> %s (%s)", comp.cfg.id, old.value, new.value, reason)
        for fn in self._listeners:
            fn(comp.cfg.id, old, new)
        self._notify()

    def _describe(self, comp: Component) -> dict[str, Any]:
        return comp.describe(time.monotonic(), self._iso(comp.last_updated))

    def _iso(self, ts: float) -> str:
        # Every component of a tick shares one timestamp: format it once.
        if self._iso_cache[0] != ts:
            self._iso_cache = (ts, iso_utc(ts))
        return self._iso_cache[1]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _get(self, cid: str) -> Component:
        comp = self._components.get(cid)
        if comp is None:
            raise UnknownComponent(cid)
        return comp

    def _dependencies(self, cid: str) -> list[str]:
        out: list[str] = []

        def visit(c: str) -> None:
            for dep in self._components[c].cfg.depends_on:
                if dep in self._components and dep not in out:
                    visit(dep)
                    out.append(dep)

        visit(cid)
        return out

    def _info(self, cfg: ComponentConfig) -> ComponentInfo:
        return ComponentInfo(id=cfg.id, name=cfg.name, plugin=cfg.plugin, options=cfg.options,
                             data_dir=self.config.server.data_dir / cfg.id,
                             config_dir=self.config.config_dir,
                             stop_timeout=cfg.stop_timeout)

    def _new_component(self, cfg: ComponentConfig) -> Component:
        server = self.config.server
        path: Path | None = server.log_dir / f"{cfg.id}.log"
        tail = LogTail(path, lines=server.log_lines, max_bytes=server.log_max_bytes,
                       backups=server.log_backups)
        return Component(cfg=cfg, info=self._info(cfg), log=tail)


def load_guarded(path: str | Path, plugins: PluginManager) -> Config:
    """config.load, with a plugin's sys.exit() in validate_config as a ConfigError."""
    try:
        return config_mod.load(path, plugins=plugins.names, validate=plugins.validate)
    except SystemExit as exc:
        raise ConfigError(str(path), None, f"a plugin's validate_config hook called "
                                           f"sys.exit({exc.code!r})") from None
