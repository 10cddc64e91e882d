"""The supervisor's side of instances: scale at run time, and applying a config.

`Scaling` is a part of core.supervisor.Supervisor kept in its own module:
how the run-time components follow a new config (a reload) or a new
instance count (a scale). Both go through `_apply`, which compares the
run-time components the config asks for (core.instances.runtime) with the
ones that exist: surplus ones stop, new ones start, changed ones restart
when their launch changed.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from core import instances
from core.errors import ShuttingDown, UnknownComponent
from core.instances import ScaleError
from core.states import ComponentState

if TYPE_CHECKING:
    from core.component import Component
    from core.config import ComponentConfig, Config
    from core.model import ComponentInfo
    from core.runner import Runner

log = logging.getLogger("control_center")

S = ComponentState
#: Surplus instances of a scale stop at least this many at a time (and in
#: at most STOP_WAVES waves), from the highest index down, each wave gone
#: before the next. One at a time took 31 ms per instance with 1,000 running
#: (every stop reads the whole process table; stops at once share one read):
#: 31 s to scale 1,000 to 0; waves of 16 took 8 s.
STOP_WAVE = 16
STOP_WAVES = 16


class Scaling:
    """Instances at run time; mixed into core.supervisor.Supervisor."""

    # Provided by Supervisor.
    _components: dict[str, Component]
    _runner: Runner
    _counts: dict[str, int]
    _reload_lock: trio.Lock
    _shutting_down: bool
    config: Config

    def _new_component(self, cfg: ComponentConfig) -> Component:
        raise NotImplementedError

    def _info(self, cfg: ComponentConfig) -> ComponentInfo:
        raise NotImplementedError

    def _describe(self, comp: Component) -> dict[str, Any]:
        raise NotImplementedError

    async def start(self, cid: str) -> dict[str, Any]:
        raise NotImplementedError

    async def stop(self, cid: str, *, wait: bool = False) -> dict[str, Any]:
        raise NotImplementedError

    async def restart(self, cid: str) -> dict[str, Any]:
        raise NotImplementedError

    # -- a component with instances, as one ------------------------------------

    def _is_group(self, cid: str) -> bool:
        """True for the id of a table whose run-time components are instances."""
        return cid not in self._components and cid in self.config.components

    def _group_view(self, cid: str) -> dict[str, Any]:
        members = {m.cfg.id: self._describe(m) for m in self._runner.members([cid])}
        return instances.group_view(self.config.components[cid], members)

    async def _each(self, cid: str, action: Callable[[str], Awaitable[Any]]
                    ) -> dict[str, Any]:
        """`action` on every instance of `cid` at once; then the group's view."""
        refused: list[ShuttingDown] = []

        async def one(iid: str) -> None:
            try:
                await action(iid)
            except UnknownComponent:  # removed by a scale or reload meanwhile
                pass
            except ShuttingDown as exc:
                refused.append(exc)

        async with trio.open_nursery() as nursery:
            for iid in list(self._runner.groups.get(cid, ())):
                nursery.start_soon(one, iid)
        if refused:
            raise ShuttingDown(cid)
        return self._group_view(cid)

    # -- scale -------------------------------------------------------------------

    async def scale(self, cid: str, count: Any) -> dict[str, Any]:
        """Run `count` instances of `cid` until the next reload; its view after.

        New instances start; surplus ones stop from the highest index down,
        in waves (STOP_WAVE), all gone before this returns. ScaleError (nothing
        changed) for a bad count or an instance's id; UnknownComponent for an
        unknown id.
        """
        count = instances.check_count(count)
        if cid not in self.config.components:
            group = cid.rpartition(".")[0]
            if cid in self._components and group in self.config.components:
                raise ScaleError(f"{cid!r} is one instance of {group!r}: scale {group!r}")
            raise UnknownComponent(cid)
        if self._shutting_down:
            raise ShuttingDown(cid)
        async with self._reload_lock:
            if self._shutting_down or cid not in self.config.components:
                # Began, or a reload removed it, while this waited for the lock.
                raise ShuttingDown(cid) if self._shutting_down else UnknownComponent(cid)
            cfg = self.config.components[cid]
            plain = cfg.instances is None and cid not in self._counts
            if not (plain and count == 1):  # a plain one already runs one process
                before = len(self._runner.groups.get(cid, ()))
                self._counts[cid] = count
                await self._apply(self.config, scaled=True)
                log.info("%s scaled from %d to %d instances", cid, before, count)
        return self.view(cid)

    def view(self, cid: str) -> dict[str, Any]:
        raise NotImplementedError

    # -- applying a config ----------------------------------------------------------

    async def _apply(self, new: Config, *, scaled: bool = False) -> None:
        """Make the run-time components those of `new` with the scale counts.

        With `scaled` (a scale request), surplus instances stop in waves from
        the highest index down and new ones start whatever autostart says;
        otherwise (a reload) removed ones stop dependents first, like a
        shutdown, and new ones start when autostart says so.
        """
        target = instances.runtime(new, self._counts)
        current = self._components
        removed = [c for c in current if c not in target]
        changed = [c for c in target if c in current and current[c].cfg != target[c]]
        added = [c for c in target if c not in current]
        # From now on ID means the target's instances: a start of ID while the
        # surplus ones stop does not start them again.
        self._runner.groups = instances.groups(target.values())
        if scaled:
            surplus = sorted(removed, key=lambda c: current[c].cfg.instance or 0, reverse=True)
            size = max(STOP_WAVE, -(-len(surplus) // STOP_WAVES))
            for at in range(0, len(surplus), size):
                async with trio.open_nursery() as wave:
                    for cid in surplus[at:at + size]:
                        wave.start_soon(functools.partial(self.stop, cid, wait=True))
        else:
            await self._runner.stop_many(removed)
        for cid in removed:
            comp = current.pop(cid)
            self._runner.containment.remove(cid)
            comp.removed = True
            if comp.task_scope is not None:
                comp.task_scope.cancel()
            comp.log.close()
        for cid in changed:
            comp = current[cid]
            cfg = target[cid]
            relaunch = not comp.cfg.same_launch(cfg)
            comp.cfg = cfg
            comp.info = self._info(cfg)
            comp.limits = self._runner.containment.limits(cfg)
            if relaunch and comp.state in (S.RUNNING, S.STARTING):
                await self.restart(cid)
            elif relaunch and cfg.autostart and comp.state in (S.STOPPED, S.ERROR):
                await self.start(cid)
        nursery = self._runner.nursery
        assert nursery is not None
        for cid in added:
            comp = current[cid] = self._new_component(target[cid])
            await nursery.start(self._runner.component_task, comp)
        for cid in added:  # every task first, as at start-up: then the spawns
            comp = current[cid]
            if scaled or comp.cfg.autostart:
                self._runner.want(comp, True)
        if added:  # in config order, as the snapshot lists them
            ordered = {cid: current[cid] for cid in target}
            current.clear()
            current.update(ordered)
        self._runner.groups = instances.groups(target.values())
        self._runner.notify()
