"""The supervisor: the public API over the components, and the snapshot tick.

The life of one component (start, watch, restart per policy, stop) is
core.runner's; the restart decision itself is core.policy's.

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
    await sup.scale(cid, n) -> dict     # instances at run time (core.scaling)

A component with `instances` is one id `ID` in the config and `ID.0` ...
at run time: view/start/stop/restart of `ID` act on all its instances.
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
from core import instances
from core.component import Component
from core.config import ComponentConfig, Config
from core.containment import Containment
from core.errors import ConfigError, ShuttingDown, UnknownComponent
from core.logs import LogTail
from core.model import ComponentInfo
from core.plugins import PluginManager
from core.runner import Runner
from core.scaling import Scaling
from core.snapshot import StatsReader, SystemStats, iso_utc
from core.states import ComponentState
from core.ticking import Ticking
from core.watch import Watchers

if TYPE_CHECKING:
    from core.events import EventLog
    from core.hub import Hub
    from core.leftovers import RunRecord

log = logging.getLogger("control_center")

S = ComponentState
#: How long a reload may take to read and validate config.toml.
CONFIG_LOAD_TIMEOUT = 5.0


class Supervisor(Scaling, Ticking):
    """The components' public API, and the snapshot tick."""

    def __init__(self, config: Config, plugins: PluginManager, hub: Hub | None = None, *,
                 record: RunRecord | None = None, events: EventLog | None = None,
                 containment: Containment | None = None) -> None:
        self.plugins = plugins
        self.hub = hub
        self.record = record
        self.events = events
        self._runner = Runner(config, plugins, record, events)
        if containment is not None:
            self._runner.containment = containment
        self._components = self._runner.components
        self._stats = StatsReader()
        self._last_stats = SystemStats(cpu_percent=0.0, memory_percent=0.0, processes={})
        self._resource_warned = -1e9
        self._reload_lock = trio.Lock()
        self._shutting_down = False
        self.tick_count = 0
        self._iso_cache: tuple[float, str] = (0.0, iso_utc(0.0))
        #: Instance counts set by scale, until the next reload.
        self._counts: dict[str, int] = {}
        for cid, cfg in instances.runtime(config, {}).items():
            self._components[cid] = self._new_component(cfg)
        self._watchers = Watchers(self._files_changed)
        self._runner.groups = instances.groups(c.cfg for c in self._components.values())

    @property
    def config(self) -> Config:
        """The current Config (frozen); a reload replaces it."""
        return self._runner.config

    @config.setter
    def config(self, value: Config) -> None:
        self._runner.config = value

    # -- public API ----------------------------------------------------------

    def component_ids(self) -> list[str]:
        return list(self._components)

    def view(self, cid: str) -> dict[str, Any]:
        if self._is_group(cid):
            return self._group_view(cid)
        return self._describe(self._get(cid))

    def log(self, cid: str) -> LogTail:
        return self._get(cid).log

    def add_listener(self, fn: Callable[[str, ComponentState, ComponentState], None]) -> None:
        """fn(component_id, old, new) is called on every state change, in order."""
        self._runner.listeners.append(fn)

    async def start(self, cid: str) -> dict[str, Any]:
        if self._is_group(cid):
            return await self._each(cid, self.start)
        comp = self._get(cid)
        if self._shutting_down:
            # A start (or restart) that arrives during shutdown would outlive it
            # and keep the supervisor from ever exiting: refuse it, unchanged.
            comp.log.note("start refused: the supervisor is shutting down")
            raise ShuttingDown(cid)
        run = self._runner
        for dep in self._dependencies(cid):
            run.want(self._components[dep], True)
        before = comp.state
        run.want(comp, True)
        if before in (S.STOPPED, S.ERROR, S.STOPPING):
            await run.wait_state(comp, lambda s: s in (S.STARTING, S.RUNNING),
                                 request=comp.requests)
        return self.view(cid)

    async def stop(self, cid: str, *, wait: bool = False) -> dict[str, Any]:
        """Returns once the component has left running (usually: "stopping");
        with `wait`, once it is stopped or in error, its process gone."""
        if self._is_group(cid):
            return await self._each(cid, functools.partial(self.stop, wait=wait))
        comp = self._get(cid)
        self._runner.want(comp, False)
        if comp.state in (S.STARTING, S.RUNNING):
            await self._runner.wait_state(comp, lambda s: s not in (S.STARTING, S.RUNNING),
                                          request=comp.requests)
        if wait:
            await self._runner.wait_state(comp, lambda s: s in (S.STOPPED, S.ERROR)
                                          and comp.child is None, request=comp.requests)
        return self.view(cid)

    async def restart(self, cid: str) -> dict[str, Any]:
        if self._is_group(cid):
            return await self._each(cid, self.restart)
        comp = self._get(cid)
        if self._shutting_down:
            return await self.start(cid)  # refused there, with a note
        if comp.state in (S.RUNNING, S.STARTING) and comp.desired:
            comp.restart_requested = True
            if comp.run_scope is not None:
                comp.run_scope.cancel()
            await self._runner.wait_state(
                comp, lambda s: s != S.RUNNING or comp.child is None, request=comp.requests)
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
            self._counts.clear()  # back to the config's instance counts
            await self._apply(new)
            await self._sync_watchers()
            log.info("config reloaded: %d added, %d removed, %d changed", len(added),
                     len(removed), len(changed))
            if self.events is not None:
                self.events.emit("reload", None, added=added, removed=removed, changed=changed)
            return {"added": added, "removed": removed, "changed": changed,
                    "unchanged": unchanged}

    async def shutdown(self) -> None:
        """Stop every component, dependents before their dependencies."""
        self._shutting_down = True
        self._watchers.stop_all()
        await self._runner.stop_many(list(self._components))
        self._runner.containment.close()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Start the component tasks and autostart components, then tick forever."""
        async with trio.open_nursery() as nursery:
            self._runner.nursery = nursery
            for comp in self._components.values():
                await nursery.start(self._runner.component_task, comp)
            for comp in self._runner.members(self.config.start_order()):
                if comp.cfg.autostart:
                    self._runner.want(comp, True)
            await self._sync_watchers()
            await self.tick()
            # The next one an interval after this one, however long the
            # caller takes before the loop first runs (python -m core
            # freezes its start-up objects then: 0.3 s or more).
            first_at = trio.current_time() + self.config.server.interval
            task_status.started()
            nursery.start_soon(self._tick_loop, first_at)

    # -- helpers -----------------------------------------------------------

    async def _sync_watchers(self) -> None:
        assert self._runner.nursery is not None
        await self._watchers.sync(self._runner.nursery, self.config.components.values(),
                                  self.config.server, self.config.config_dir)

    async def _files_changed(self, cid: str, reason: str) -> None:
        """A watched file changed (core.watch): restart what of the component runs.

        `cid` is the table's id: with instances, each running instance restarts.
        """
        async with trio.open_nursery() as nursery:
            for comp in self._runner.members([cid]):
                if self._shutting_down or comp.state not in (S.RUNNING, S.STARTING) \
                        or not comp.desired:
                    continue
                log.info("%s: restarting: %s", comp.cfg.id, reason)
                comp.log.note(f"restarting: {reason}")
                if self.events is not None:
                    self.events.emit("restart", comp.cfg.id, reason=reason)
                nursery.start_soon(self._restart_quietly, comp.cfg.id)

    async def _restart_quietly(self, cid: str) -> None:
        """A restart of the supervisor's own (a watch): one refused by a shutdown or
        a reload that removed the component meanwhile is no error."""
        try:
            await self.restart(cid)
        except (ShuttingDown, UnknownComponent) as exc:
            log.info("%s: not restarted: %s", cid, exc)

    def _describe(self, comp: Component) -> dict[str, Any]:
        return comp.describe(time.monotonic(), self._iso(comp.last_updated))

    def _iso(self, ts: float) -> str:
        # Every component of a tick shares one timestamp: format it once.
        if self._iso_cache[0] != ts:
            self._iso_cache = (ts, iso_utc(ts))
        return self._iso_cache[1]

    def _get(self, cid: str) -> Component:
        comp = self._components.get(cid)
        if comp is None:
            raise UnknownComponent(cid)
        return comp

    def _dependencies(self, cid: str) -> list[str]:
        out: list[str] = []

        def visit(c: str) -> None:
            for comp in self._runner.members(self._components[c].cfg.depends_on):
                if comp.cfg.id not in out:
                    visit(comp.cfg.id)
                    out.append(comp.cfg.id)

        visit(cid)
        return out

    def _info(self, cfg: ComponentConfig) -> ComponentInfo:
        return ComponentInfo(id=cfg.id, name=cfg.name, plugin=cfg.plugin, options=cfg.options,
                             data_dir=self.config.server.data_dir / cfg.id,
                             config_dir=self.config.config_dir,
                             stop_timeout=cfg.stop_timeout, env_file_env=cfg.env_file_env,
                             memory_max=cfg.memory_max)

    def _new_component(self, cfg: ComponentConfig) -> Component:
        server = self.config.server
        path: Path | None = server.log_dir / f"{cfg.id}.log"
        tail = LogTail(path, lines=server.log_lines, max_bytes=server.log_max_bytes,
                       backups=server.log_backups)
        containment = self._runner.containment
        return Component(cfg=cfg, info=self._info(cfg), log=tail, containment=containment.kind,
                         limits=containment.limits(cfg))


def load_guarded(path: str | Path, plugins: PluginManager) -> Config:
    """config.load, with a plugin's sys.exit() in validate_config as a ConfigError."""
    try:
        return config_mod.load(path, plugins=plugins.names, validate=plugins.validate)
    except SystemExit as exc:
        raise ConfigError(str(path), None, f"a plugin's validate_config hook called "
                                           f"sys.exit({exc.code!r})") from None
