"""`python -m core`: load the config, start the supervisor and port 9000, handle signals.

Start-up order: config (exit 2 on any mistake, nothing started), leftovers
of a crashed previous run ended, web server listening, components started.
Shutdown order (SIGTERM/SIGINT): components stopped dependents-first, every
WebSocket closed with 1001, exit 0. SIGHUP reloads config.toml.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
from pathlib import Path

import trio

from core.config import Config, ConfigError
from core.errors import OptionError
from core.plugins import PluginManager

log = logging.getLogger("control_center")


class StartupError(Exception):
    """Something in the operator's hands stops the start (port taken, already running)."""


def freeze_startup_objects() -> None:
    """Keep what start-up built out of every later garbage collection.

    A full collection walks every tracked object; with the modules, plugins
    and web app of a running supervisor that took 20-30 ms of the event loop
    at once (measured: bench/core_bench.py tick --health). Those objects live
    as long as the process, so they are moved to the permanent generation.
    """
    gc.collect()
    gc.freeze()
    _trim_heap()


def _trim_heap() -> None:
    """Hand the memory start-up freed back to the system (glibc's malloc_trim).

    Parsing, imports and the first spawns leave free blocks all over the
    heap, which count in the supervisor's RSS until reused: 4-5 MB of 45.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)


def load_config(path: str | Path, plugins: PluginManager) -> Config:
    """Read and validate `path`; a ConfigError also when a plugin's validate_config hangs."""
    from core.supervisor import CONFIG_LOAD_TIMEOUT, load_guarded

    found: list[Config | BaseException] = []

    def work() -> None:
        try:
            found.append(load_guarded(path, plugins))
        except BaseException as exc:
            found.append(exc)

    # A daemon thread: a validate_config hook that never returns must neither
    # hang the start nor keep the interpreter from exiting with status 2.
    worker = threading.Thread(target=work, name="config-load", daemon=True)
    worker.start()
    worker.join(CONFIG_LOAD_TIMEOUT)
    if not found:
        raise ConfigError(str(path), None, f"reading the config did not finish within "
                                           f"{CONFIG_LOAD_TIMEOUT:g} s (a plugin's "
                                           "validate_config hook hangs?)")
    result = found[0]
    if isinstance(result, BaseException):
        raise result
    return result


async def _watch_signals(supervisor: object, stop: trio.Event,
                         *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
    async def reload() -> None:
        try:
            await supervisor.reload()  # type: ignore[attr-defined]
        except (ConfigError, OptionError) as exc:
            log.error("config reload rejected, nothing changed: %s", exc)

    # Reloads run beside this loop: a slow one must not hold SIGTERM up.
    async with trio.open_nursery() as reloads:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT,
                                       signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: reloading the config")
                    reloads.start_soon(reload)
                    continue
                log.info("%s: stopping every component, then exiting",
                         signal.Signals(signum).name)
                stop.set()


async def serve(config_path: str | Path) -> int:
    """Run until SIGTERM/SIGINT; the exit status."""
    from core import events as event_log
    from core import process
    from core.collector import PacedCollector
    from core.containment import Containment
    from core.federation import Federation
    from core.hub import Hub
    from core.leftovers import AlreadyRunning, RunRecord
    from core.remotes import instance_id
    from core.supervisor import Supervisor
    from core.web import serve as serve_web

    plugins = PluginManager()
    config = load_config(config_path, plugins)
    server = config.server
    _check_resources(config)
    process.enable_subreaper()
    try:
        record = RunRecord(server.data_dir / ".control-center" / "run.json")
        for line in record.end_leftovers():
            log.warning("ended a leftover of the previous run: %s", line)
    except AlreadyRunning as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        # An operator's mistake (a file where the directory should be, no
        # permission), not a bug: say which key to change, no traceback.
        raise StartupError(f"{config.path}: server.data_dir: cannot use {server.data_dir}: "
                           f"{exc.strerror or exc}") from None
    # After the run record's lock: only the supervisor of this data directory
    # touches its cgroups, and what a crashed run left in them ends first.
    containment = Containment.open(instance_id(server.data_dir), enabled=server.cgroups)
    if containment.tree is not None:
        for cid, pids in containment.tree.leftovers().items():
            log.warning("ended a leftover of the previous run: cgroup of %s, pid(s) %s", cid,
                        ", ".join(map(str, pids)))
    hub = Hub(interval=server.interval, history_seconds=server.history_seconds)
    try:
        events, notifiers = event_log.build(config, plugins)
    except OSError as exc:
        raise StartupError(f"{config.path}: server.data_dir: cannot keep the event log in "
                           f"{server.data_dir}: {exc.strerror or exc}") from None
    federation = Federation(config.remotes, instance_id(server.data_dir), server.interval)
    hub.extender = federation  # the remotes' components join each snapshot
    supervisor = Supervisor(config, plugins, hub, record=record, events=events,
                            containment=containment)
    stop = trio.Event()
    close_web = trio.Event()
    web_closed = trio.Event()

    collector = PacedCollector()

    async def run_web(*, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve_web(supervisor, hub, server, shutdown=close_web,
                            after_fanout=collector.collect_if_due, auth_config=config.auth,
                            events=events, notifiers=notifiers,
                            reserved_descriptors=reserved_descriptors(config),
                            task_status=task_status)
        finally:
            web_closed.set()

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(_watch_signals, supervisor, stop)
            nursery.start_soon(event_log.run_all, events, notifiers)
            supervisor.publish_current()
            try:
                port = await nursery.start(run_web)
            except OSError as exc:
                raise StartupError(f"{config.path}: server.port: cannot listen on "
                                   f"{server.host}:{server.port}: {exc.strerror or exc}"
                                   ) from None
            scheme = "https" if server.tls_cert else "http"
            host = server.host if server.host not in ("0.0.0.0", "::") else "127.0.0.1"
            print(f"Control Center dashboard: {scheme}://{host}:{port}/", flush=True)
            await nursery.start(supervisor.run)
            await nursery.start(federation.run)
            freeze_startup_objects()
            collector.take_over()
            await stop.wait()
            with trio.CancelScope(shield=True):
                # Bounded even if a bug kept a component from ever stopping:
                # then what is left is killed below and the exit still happens.
                limit = sum(c.stop_timeout for c in supervisor.config.components.values()) + 10
                with trio.move_on_after(limit) as bounded:
                    await supervisor.shutdown()
                if bounded.cancelled_caught:
                    log.error("components still not stopped after %g s: killing what is "
                              "left", limit)
                    process.kill_all_now()
                # Dashboards saw every component stop; now each WebSocket gets 1001.
                close_web.set()
                with trio.move_on_after(5):
                    await web_closed.wait()
            nursery.cancel_scope.cancel()
    finally:
        process.kill_all_now()
        containment.close()
        collector.give_back()
    log.info("stopped cleanly")
    return 0


#: A token shorter than this is guessable; the supervisor warns at start-up.
MIN_TOKEN_LENGTH = 16


def reserved_descriptors(config: Config) -> int:
    """Descriptors kept from the connections: a base, and for each component its
    pidfd, two output pipes, its log file and its kept-open /proc stat file (each
    instance of a component with `instances` counts as one)."""
    from core.web.gate import RESERVED_DESCRIPTORS

    processes = sum(1 if c.instances is None else c.instances
                    for c in config.components.values())
    return RESERVED_DESCRIPTORS + 5 * processes


def _check_resources(config: Config) -> None:
    """Raise the descriptor limit for the clients; warn of a weak token."""
    from core.web.gate import connection_budget, raise_descriptor_limit

    before, after = raise_descriptor_limit()
    cap = connection_budget(config.server.max_connections, reserved_descriptors(config))
    if after != before:
        log.info("file descriptors: soft limit raised from %d to %d; up to %d connections "
                 "on port %d", before, after, cap, config.server.port)
    if config.server.max_connections > cap:
        log.warning("server.max_connections = %d is above what %d descriptors allow: "
                    "serving at most %d", config.server.max_connections, after, cap)
    token = config.server.token
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        log.warning("server.token is %d characters long: use at least %d random ones "
                    "(python -c 'import secrets; print(secrets.token_urlsafe(24))')",
                    len(token), MIN_TOKEN_LENGTH)


def run(config_path: str | Path) -> int:
    """Entry point of `python -m core`: exit status 0, or 2 for an operator mistake."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        return trio.run(serve, config_path)
    except (ConfigError, StartupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:
        mistakes, rest = group.split((ConfigError, StartupError))
        if mistakes is None or rest is not None:
            raise
        print(f"error: {_first_leaf(mistakes)}", file=sys.stderr)
        return 2


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
