"""Probes of a running component: the built-in checks on the event loop, the
plugin's probe hook in a worker thread, and the quick probes while it starts.

A mixin of core.runner.Runner, which owns the components, the limiters and
the change event these use.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import trio

from core import health, health_log
from core.component import Component, call_hook, describe_exc
from core.errors import PluginError
from core.model import Probe

if TYPE_CHECKING:
    from core.config import Config
    from core.events import EventLog
    from core.plugins import PluginManager

#: While a component starts, probe this often until it first reports healthy.
STARTUP_PROBE_INTERVAL = 0.1
#: Probes running at once in worker threads, all components together.
PROBE_THREADS = 16
#: Built-in health checks open at once (a socket each), all components together.
BUILTIN_CHECKS = 256


class Probing:
    """Runner's probes (see the module's docstring)."""

    config: Config
    plugins: PluginManager
    events: EventLog | None
    _probe_slots: trio.CapacityLimiter
    _check_slots: trio.CapacityLimiter

    def notify(self) -> None:
        raise NotImplementedError

    async def probe(self, comp: Component, done: trio.Event) -> None:
        """One probe of `comp`: its built-in check on the loop, or its plugin's
        probe hook in a worker thread; bounded by probe_timeout either way."""
        pid = comp.pid
        if pid is None or comp.probe_busy_since is not None:
            # Gone, or a probe of it is under way: a probe the tick scheduled
            # starts a step later, when the start-up probes may have taken it.
            # Two at once would both log the one change of health they see.
            done.set()
            return
        comp.probe_busy_since = time.monotonic()
        was = comp.health
        try:
            if comp.cfg.health_cmd:
                async with self._check_slots:
                    result = await health.check_command(
                        comp.cfg.health_cmd, comp.cfg.probe_timeout,
                        cwd=str(self.config.config_dir), env={})
                if comp.apply_probe(pid, result):
                    self.notify()
                return
            if comp.health_check is not None:
                async with self._check_slots:
                    result = await self._builtin_check(comp.health_check,
                                                       comp.cfg.probe_timeout)
                if comp.apply_probe(pid, result):
                    self.notify()
                return
            async with self._probe_slots:
                result = await call_hook(self.plugins, comp, "probe",
                                         timeout=comp.cfg.probe_timeout,
                                         limiter=comp.probe_limiter, pid=pid)
            if comp.apply_probe(pid, result):
                self.notify()
        except Exception as exc:
            if comp.pid == pid:
                comp.health = "unhealthy"
                # A PluginError already names the plugin and the hook.
                comp.probe_error = str(exc) if isinstance(exc, PluginError) else (
                    f"probe failed: {describe_exc(exc)}")
                if self.events is not None:
                    self.events.emit("probe_error", comp.cfg.id, error=comp.probe_error)
        finally:
            comp.probe_busy_since = None
            if comp.pid == pid:
                health_log.note_change(comp, was, events=self.events)
            done.set()

    @staticmethod
    async def _builtin_check(spec: str, timeout: float) -> Probe:
        with trio.move_on_after(timeout):
            return await health.check(spec)
        return Probe(healthy=False, error=f"health check {spec} did not answer within "
                                          f"{timeout:g} s")

    async def _startup_probes(self, comp: Component) -> None:
        deadline = trio.current_time() + comp.cfg.start_timeout
        while comp.health == "starting" and trio.current_time() < deadline:
            if comp.probe_busy_since is None:
                ev = trio.Event()
                await self.probe(comp, ev)
                if comp.health == "healthy":
                    return
                # Not healthy yet is normal while starting: keep "starting".
                comp.health = "starting"
            await trio.sleep(STARTUP_PROBE_INTERVAL)
        if comp.health == "starting":
            comp.health = "unhealthy"
            comp.probe_error = (comp.probe_error or
                                f"not healthy {comp.cfg.start_timeout:g} s after start")
            health_log.note_change(comp, "starting", start_timed_out=True, events=self.events)
            self.notify()
