"""One component's runtime record, how it reads in a snapshot, and hook calls.

The supervisor's component task is the only writer of a Component; the
snapshot and the web layer read it through `describe`.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from core import probe_metrics
from core.config import ComponentConfig
from core.errors import PluginError
from core.logs import LogTail
from core.model import ComponentInfo, Probe
from core.plugins import PluginManager
from core.process import ChildProcess
from core.states import ComponentState

S = ComponentState


@dataclass(eq=False)
class Component:
    """One component's runtime record. Only its own task writes it."""

    cfg: ComponentConfig
    info: ComponentInfo
    log: LogTail
    state: ComponentState = S.STOPPED
    desired: bool = False
    restart_requested: bool = False
    child: ChildProcess | None = None
    started_at: float | None = None
    restarts: int = 0
    exit_code: int | None = None
    health: str | None = None
    error: str | None = None
    probe_error: str | None = None
    next_restart_at: float | None = None
    cpu_percent: float | None = None
    memory_mb: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    last_updated: float = field(default_factory=time.time)
    probe_busy_since: float | None = None
    #: Whether the current run is probed (its plugin has a probe hook and the
    #: Launch did not opt out).
    probes: bool = False
    #: The current run's built-in check (Launch.health), run on the event loop.
    health_check: str | None = None
    # One worker thread at a time per component and kind of hook: a plugin
    # that hangs holds its own token (abandoned threads keep theirs until
    # they return) and never starves another component.
    probe_limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(1))
    hook_limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(1))
    # Its own for stop: a stop hook left hanging must not keep the next start
    # waiting for the start hook's token (nor a hung start block a stop).
    stop_limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(1))
    wake: trio.Event = field(default_factory=trio.Event)
    run_scope: trio.CancelScope | None = None
    task_scope: trio.CancelScope | None = None
    removed: bool = False
    #: "cgroup" or "process-group" (core.containment), and the limits in effect.
    containment: str = "process-group"
    limits: dict[str, Any] = field(default_factory=dict)
    #: Why the supervisor restarted it (memory_max): the next run's `error`.
    restart_reason: str | None = None
    #: Bumped by every start/stop request: a caller waiting for the outcome of
    #: its request stops waiting once a later request has superseded it.
    requests: int = 0
    _deps_of: ComponentConfig | None = field(default=None, repr=False)
    _deps: list[str] = field(default_factory=list, repr=False)

    @property
    def pid(self) -> int | None:
        child = self.child
        return child.pid if child is not None and child.returncode is None else None

    def poke(self) -> None:
        self.wake.set()
        self.wake = trio.Event()

    def apply_probe(self, pid: int, result: Any) -> bool:
        """Take a probe's answer; True when the health changed."""
        if self.pid != pid:
            return False  # a probe of a process that is gone since
        if result is None:
            result = Probe()
        if not isinstance(result, Probe):
            self.health = "unhealthy"
            self.probe_error = (f"probe returned {type(result).__name__}, expected "
                                "core.Probe or None")
            self.metrics = {}
            return True
        was = self.health
        self.health = "healthy" if result.healthy else "unhealthy"
        self.probe_error = None if result.healthy else (
            str(result.error) if result.error else "probe reported unhealthy")
        try:
            self.metrics = probe_metrics.accept(self, result.metrics, self.log.note,
                                                self.cfg.id)
        except (TypeError, ValueError):
            self.metrics = {}
            self.probe_error = "probe returned metrics that are not a mapping of numbers"
        return was != self.health

    def describe(self, mono: float, stamp: str) -> dict[str, Any]:
        """This component as in the snapshot; `stamp` is its last_updated, formatted.

        A view built between two ticks (a REST answer) carries the earlier
        tick's stamp: the dashboard relies on that to tell which of a REST
        answer and a snapshot that arrive out of order is the newer.
        """
        child = self.child
        running = child is not None and child.returncode is None
        error = self.error
        if self.probe_error and running:
            error = self.probe_error if not error else f"{error}; {self.probe_error}"
        if self.log.file_error:
            error = f"{error}; log file: {self.log.file_error}" if error else (
                f"log file: {self.log.file_error}")
        # A probe that measures where the work runs (a container's cgroup)
        # speaks for it instead of the process the core watches.
        cpu = self.metrics.get("cpu_percent", self.cpu_percent)
        memory = self.metrics.get("memory_mb", self.memory_mb)
        next_in = None
        if self.next_restart_at is not None:
            next_in = round(max(0.0, self.next_restart_at - mono), 2)
        cfg = self.cfg
        # The plain str; .value goes through the enum's descriptor, a Python
        # call for every component every tick.
        state = self.state._value_
        if self._deps_of is not cfg:
            # Shared by every snapshot until a reload changes the config; the
            # snapshot is never mutated after it is built.
            self._deps_of, self._deps = cfg, list(cfg.depends_on)
        if running:
            assert child is not None
            started = self.started_at
            entry = {
                "name": cfg.name, "state": state, "pid": child.pid,
                "uptime": round(mono - started, 1) if started else None,
                "cpu_percent": cpu, "memory_mb": memory,
                "error": error, "last_updated": stamp, "plugin": cfg.plugin,
                "restarts": self.restarts, "exit_code": self.exit_code,
                "health": self.health, "next_restart_in": next_in, "depends_on": self._deps,
                "metrics": dict(self.metrics), "containment": self.containment,
                "limits": self.limits,
            }
        else:
            entry = {
                "name": cfg.name, "state": state, "pid": None, "uptime": None,
                "cpu_percent": None, "memory_mb": None, "error": error,
                "last_updated": stamp, "plugin": cfg.plugin, "restarts": self.restarts,
                "exit_code": self.exit_code, "health": None, "next_restart_in": next_in,
                "depends_on": self._deps, "metrics": {}, "containment": self.containment,
                "limits": self.limits,
            }
        if cfg.instance_of is not None:  # one of `instances = N` (core.instances)
            entry["instance_of"] = cfg.instance_of
        return entry


async def call_hook(plugins: PluginManager, comp: Component, hook: str, *, timeout: float,
                limiter: trio.CapacityLimiter | None = None, **kwargs: Any) -> Any:
    """Call the component's own plugin hook in a worker thread, bounded."""
    info = comp.info
    call = plugins.call
    plugin = comp.cfg.plugin

    def run() -> Any:
        return call(plugin, hook, component=info, **kwargs)

    with trio.move_on_after(timeout) as scope:
        try:
            return await trio.to_thread.run_sync(
                run, abandon_on_cancel=True, limiter=limiter or comp.hook_limiter)
        except (Exception, SystemExit) as exc:
            # SystemExit too: a plugin's sys.exit() is its failure, not ours.
            raise PluginError(f"plugin {plugin!r} {hook} hook failed: "
                              f"{describe_exc(exc)}") from exc
    assert scope.cancelled_caught
    raise PluginError(f"plugin {plugin!r} {hook} hook did not return within {timeout:g} s")


def exit_text(code: int | None) -> str:
    """How a process ended, in words: "exited with status 3", "killed by SIGKILL"."""
    if code is None:
        return "did not start"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exited with status {code}"


def describe_exc(exc: BaseException) -> str:
    """An exception as one line for an `error` field: "ValueError: bad port"."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
