"""The life of one component: start, watch, restart per policy, stop.

One task per component (`Runner.component_task`) carries out what the
restart policy (core.policy) decides; `Runner.set_state` is the one place a
component's state changes. The supervisor (core.supervisor) owns a Runner
and adds the public API and the snapshot tick on top.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import trio

from core.component import Component, call_hook, describe_exc, exit_text
from core.containment import Containment
from core.errors import PluginError
from core.instances import INSTANCE_ENV
from core.model import Launch
from core.policy import Action, Backoff, after_exit
from core.probing import BUILTIN_CHECKS, PROBE_THREADS, Probing
from core.process import ChildProcess, SpawnError
from core.runas import RunAsError, hand_over, launch_env
from core.states import ComponentState, check_transition

if TYPE_CHECKING:
    from core.config import Config
    from core.events import EventLog
    from core.leftovers import RunRecord
    from core.plugins import PluginManager

log = logging.getLogger("control_center")

S = ComponentState
#: Built-in plugins whose start hook never blocks (the process plugin only
#: resolves paths and reads its options): called on the event loop, which
#: spares each restart a worker-thread round trip (several ms on a busy
#: machine). Every other plugin's hooks run in worker threads.
INLINE_START = frozenset({"process"})


class Runner(Probing):
    """Runs each component's task; holds the components and the change event."""

    def __init__(self, config: Config, plugins: PluginManager,
                 record: RunRecord | None, events: EventLog | None = None) -> None:
        self.config = config
        #: Where every state change, crash, restart and give-up is told.
        self.events = events
        self.plugins = plugins
        self.record = record
        #: Each run's cgroup, or process groups (core.containment).
        self.containment = Containment()
        self.components: dict[str, Component] = {}
        #: Table id -> its run-time ids (`ID.0` ... with instances; a plain one: itself).
        self.groups: dict[str, list[str]] = {}
        self.listeners: list[Callable[[str, ComponentState, ComponentState], None]] = []
        self.nursery: trio.Nursery | None = None
        self._changed = trio.Event()
        self._probe_slots = trio.CapacityLimiter(PROBE_THREADS)
        self._check_slots = trio.CapacityLimiter(BUILTIN_CHECKS)

    # -- requests ------------------------------------------------------------

    def want(self, comp: Component, desired: bool) -> None:
        comp.desired = desired
        comp.requests += 1
        if not desired:
            comp.restart_requested = False
            if comp.run_scope is not None:
                comp.run_scope.cancel()
        comp.poke()
        self.notify()  # wakes callers whose request this one supersedes

    async def wait_state(self, comp: Component, pred: Callable[[ComponentState], bool], *,
                         request: int | None = None) -> None:
        """Until pred(state); or, given `request`, until a later request supersedes it.

        Without that escape a stop answered by a start that came right after it
        (or the reverse) would wait for a state that never comes.
        """
        while not pred(comp.state):
            if request is not None and comp.requests != request:
                return
            await self._changed.wait()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def set_state(self, comp: Component, new: ComponentState, reason: str) -> None:
        """The one place a component's state changes."""
        old = comp.state
        if old == new:
            comp.log.note(reason)
            self.notify()
            return
        check_transition(comp.cfg.id, old, new)
        comp.state = new
        comp.log.note(f"{old.value} -> {new.value}: {reason}")
        log.info("%s: %s -> %s (%s)", comp.cfg.id, old.value, new.value, reason)
        if self.events is not None:
            self.events.emit("state", comp.cfg.id, old=old.value, new=new.value, reason=reason)
        for fn in self.listeners:
            fn(comp.cfg.id, old, new)
        self.notify()

    # -- one task per component ------------------------------------------------

    async def component_task(self, comp: Component, *,
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
                    self.set_state(comp, S.STOPPED, "stopped on request")

    async def _supervise(self, comp: Component) -> None:
        """Start, watch, and restart per policy until stopped or given up."""
        failures = 0
        if comp.state != S.STARTING:
            self.set_state(comp, S.STARTING, "start requested")  # STOPPED/ERROR -> STARTING
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
                # In the supervisor's own log too: a state that stays
                # "starting" logs no transition that would tell why.
                log.warning("%s: start failed: %s", cfg.id, exc)
                quick = True
                code: int | None = None
            else:
                code = await self._watch(comp, child)
                quick = time.monotonic() - began < cfg.stable_after
            # The child is gone (or never came): the policy decides, this carries it out.
            comp.exit_code = code
            expected = frozenset(cfg.exit_codes)
            if (code is None or code not in expected) and self.events is not None:
                # Not asked to stop (a stop cancels this task first): a crash.
                self.events.emit("crashed", cfg.id, reason=comp.error if code is None
                                 else self.containment.exit_text(cfg.id, code), exit_code=code)
            decision = after_exit(cfg.restart, code, quick=quick, failures=failures,
                                  backoff=Backoff(cfg.backoff_initial, cfg.backoff_factor,
                                                  cfg.backoff_max, cfg.max_failures),
                                  expected=expected)
            failures = decision.failures
            if decision.action is Action.STOP:
                comp.desired = False
                # RUNNING -> STOPPED: exited by itself with an expected status
                self.set_state(comp, S.STOPPED, f"exited with status {code} (expected)"
                               if code else "exited with status 0")
                return
            if decision.action is Action.FAIL:
                comp.desired = False
                comp.error = comp.error or self.containment.exit_text(cfg.id, code)
                # RUNNING/STARTING -> ERROR: failed and the policy does not restart
                self.set_state(comp, S.ERROR, comp.error)
                return
            if decision.action is Action.GIVE_UP:
                comp.desired = False
                comp.error = (f"gave up after {failures} quick failures in a row (last: "
                              f"{comp.error or exit_text(code)}); start it again to retry")
                if self.events is not None:
                    self.events.emit("gave_up", cfg.id, reason=comp.error, failures=failures)
                # STARTING/RUNNING -> ERROR: too many quick failures
                self.set_state(comp, S.ERROR, comp.error)
                return
            delay = decision.delay
            if code is not None:
                comp.error = self.containment.exit_text(cfg.id, code)
            comp.restarts += 1
            # RUNNING -> STARTING: died; the policy restarts it after `delay`
            why = exit_text(code) if code is not None else "start failed"
            self.set_state(comp, S.STARTING, f"{why}; restarting in {delay:.2f} s")
            if self.events is not None:
                self.events.emit("restart_scheduled", cfg.id, delay=round(delay, 3),
                                 restarts=comp.restarts)
            if delay > 0:
                comp.next_restart_at = time.monotonic() + delay
                self.notify()
                await trio.sleep(delay)

    async def _spawn(self, comp: Component) -> ChildProcess:
        try:
            comp.info.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            # A start failure of this component (restart policy applies), not a
            # crash of the supervisor.
            raise SpawnError(f"cannot create the data directory {comp.info.data_dir}: "
                             f"{exc.strerror or exc}") from None
        if comp.cfg.plugin in INLINE_START:
            launch = self._start_inline(comp)
        else:
            launch = await call_hook(self.plugins, comp, "start",
                                     timeout=comp.cfg.start_timeout)
        if not isinstance(launch, Launch):
            raise PluginError(f"plugin {comp.cfg.plugin!r} start hook returned "
                              f"{type(launch).__name__}, expected core.Launch")
        assert self.nursery is not None
        if launch.user is not None:
            try:
                hand_over(comp.info.data_dir, launch.user, launch.group)
            except (OSError, RunAsError) as exc:
                raise SpawnError(f"cannot give the data directory {comp.info.data_dir} to "
                                 f"{launch.user}: {getattr(exc, 'strerror', None) or exc}"
                                 ) from None
        cwd = launch.cwd or str(self.config.config_dir)
        env = launch_env(comp.info, launch)
        if comp.cfg.instance is not None:
            env[INSTANCE_ENV] = str(comp.cfg.instance)
        cgroup = self.containment.new_run(comp.cfg)
        try:
            child = await ChildProcess.spawn(
                self.nursery, launch.argv, cwd=cwd, env=env, log=comp.log, user=launch.user,
                group=launch.group, umask=launch.umask, cgroup=cgroup)
        except BaseException as exc:
            if cgroup is not None:
                cgroup.remove()  # no run: no empty leaf left per failed start
            if not isinstance(exc, TypeError | ValueError):
                raise
            # Popen refuses it before any process exists (a non-string env
            # value, a NUL byte): the plugin's mistake, this component's failure.
            raise PluginError(f"plugin {comp.cfg.plugin!r} start hook returned a Launch that "
                              f"cannot be run: {exc}") from None
        comp.child = child
        comp.health_check = launch.health if launch.probe else None
        comp.probes = bool(comp.cfg.health_cmd) or (launch.probe and (
            comp.health_check is not None or self.plugins.implements(comp.cfg.plugin, "probe")))
        if self.record is not None:
            self.record.add(comp.cfg.id, child.pid)
        return child

    def _start_inline(self, comp: Component) -> Any:
        try:
            return self.plugins.call(comp.cfg.plugin, "start", component=comp.info)
        except (Exception, SystemExit) as exc:
            raise PluginError(f"plugin {comp.cfg.plugin!r} start hook failed: "
                              f"{describe_exc(exc)}") from exc

    async def _watch(self, comp: Component, child: ChildProcess) -> int:
        """RUNNING until the child exits; probes quickly until it is first healthy."""
        comp.child = child
        comp.started_at = time.monotonic()
        comp.exit_code = None
        # A restart by the supervisor (memory_max) says why for the run that follows.
        comp.error, comp.restart_reason = comp.restart_reason, None
        comp.probe_error = None
        comp.metrics = {}
        has_probe = comp.probes
        comp.health = "starting" if has_probe else "healthy"
        # STARTING -> RUNNING: the process exists
        self.set_state(comp, S.RUNNING, f"started pid {child.pid}")
        async with trio.open_nursery() as nursery:
            if has_probe:
                nursery.start_soon(self._startup_probes, comp)
            code = await child.wait()
            nursery.cancel_scope.cancel()
        if self.record is not None:
            self.record.remove(child.pid)
        comp.log.note(self.containment.exit_text(comp.cfg.id, code))
        return code

    def restart_for(self, comp: Component, reason: str) -> None:
        """Restart a running component on the supervisor's own decision (memory_max)."""
        if comp.restart_requested or comp.run_scope is None:
            return
        comp.log.note(reason)
        log.warning("%s: %s", comp.cfg.id, reason)
        if self.events is not None:
            self.events.emit("crashed", comp.cfg.id, reason=reason, exit_code=None)
        comp.restart_reason = reason
        comp.restart_requested = True
        comp.run_scope.cancel()

    # -- stop ----------------------------------------------------------------------

    async def _stop_child(self, comp: Component) -> None:
        """Plugin stop hook, then signal, wait, SIGKILL: bounded by stop_timeout."""
        child = comp.child
        if child is None or child.returncode is not None:
            comp.child = None
            return
        cfg = comp.cfg
        if comp.state != S.STOPPING:
            self.set_state(comp, S.STOPPING, "stop requested")  # RUNNING -> STOPPING
        began = time.monotonic()
        if self.plugins.implements(cfg.plugin, "stop"):
            try:
                with trio.move_on_after(cfg.stop_timeout / 2):
                    await call_hook(self.plugins, comp, "stop", timeout=cfg.stop_timeout / 2,
                                    pid=child.pid, limiter=comp.stop_limiter)
            except Exception as exc:
                comp.log.note(f"stop hook failed: {describe_exc(exc)}")
        remaining = max(0.1, cfg.stop_timeout - (time.monotonic() - began))
        try:
            code = await child.stop(cfg.stop_signal, remaining)
        except Exception as exc:  # a stop that cannot finish must not leave it running
            log.exception("%s: stopping failed", cfg.id)
            comp.log.note(f"stopping failed ({describe_exc(exc)}): SIGKILL to all of it")
            child.kill_now()
            code = child.returncode if child.returncode is not None else -signal.SIGKILL
        if self.record is not None:
            self.record.remove(child.pid)
        comp.exit_code = code
        comp.child = None
        comp.health = None
        comp.metrics = {}
        if comp.restart_requested:
            comp.restarts += 1
        # STOPPING -> STOPPED: stopped on request
        self.set_state(comp, S.STOPPED, f"stopped ({exit_text(code)})")

    async def _wait_dependencies(self, comp: Component) -> None:
        deps = comp.cfg.depends_on
        if not deps:
            return
        while True:
            waiting = []
            for other in self.members(deps):
                if not (other.state == S.RUNNING and other.health == "healthy"):
                    detail = other.state.value if other.state != S.RUNNING else (
                        f"running, {other.health}")
                    waiting.append(f"{other.cfg.id} ({detail})")
            if not waiting:
                comp.error = None
                return
            text = "waiting for " + ", ".join(waiting)
            if comp.error != text:
                comp.error = text
                comp.log.note(text)
            await self._changed.wait()

    def members(self, ids: Iterable[str]) -> list[Component]:
        """The run-time components of table ids: every instance of each."""
        comps = self.components
        return [comps[c] for cid in ids for c in self.groups.get(cid, (cid,)) if c in comps]

    async def stop_many(self, cids: list[str]) -> None:
        """Stop components in waves: nothing stops before what depends on it."""
        cfgs = {c: self.components[c].cfg for c in cids if c in self.components}
        pending = set(cfgs)
        while pending:
            # depends_on names tables: an instance waits for every dependent of its table.
            needed = {d for o in pending for d in cfgs[o].depends_on}
            wave = [c for c in pending if (cfgs[c].instance_of or c) not in needed]
            if not wave:  # cannot happen with a validated config; stop the rest
                wave = list(pending)
            async with trio.open_nursery() as nursery:
                for cid in wave:
                    nursery.start_soon(self._stop_and_wait, cid)
            pending -= set(wave)

    async def _stop_and_wait(self, cid: str) -> None:
        comp = self.components.get(cid)
        if comp is None:
            return
        self.want(comp, False)
        await self.wait_state(comp, lambda s: s in (S.STOPPED, S.ERROR) and comp.child is None)
