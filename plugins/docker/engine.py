"""The docker plugin's side of the Docker Engine API (Docker SDK for Python).

Every function here blocks on the engine and is called from the core's hook
worker threads, never from the event loop. One client per process is shared
by those threads (the SDK's connection pool is sized for the core's probe
threads); it is made on first use and again after the engine was unreachable.

A container of ours carries three labels: the Control Center instance
(instance.py), the component id, and this supervisor process's run token.
At every start the containers of this instance are listed once: the
component's own earlier container and every container of an earlier run
(a supervisor that died by SIGKILL leaves them running) are removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import requests.exceptions
from dotenv import dotenv_values

log = logging.getLogger("control_center")

LABEL_INSTANCE = "control-center.instance"
LABEL_COMPONENT = "control-center.component"
LABEL_RUN = "control-center.run"

#: This supervisor process: containers labelled with another run are leftovers.
RUN_TOKEN = uuid.uuid4().hex

#: Seconds an API call may take before the SDK gives up (hooks have their own bounds).
API_TIMEOUT = 30.0
#: Connections kept to the engine: one per probe thread of the core (16) and a few more.
POOL_SIZE = 20
#: The engine's own log of a container is rotated at this size; our log file is the
#: operator's record, the engine's only needs to hold what the follower has not read.
ENGINE_LOG_MAX = "10m"
#: Seconds of a stop that the follower keeps for kill + remove after `docker stop`.
STOP_MARGIN = 1.0

_client_lock = threading.Lock()
_client: docker.DockerClient | None = None


_OS_REASON = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")
_OS_REASON_TUPLE = re.compile(r"Error\(-?\d+, '([^']+)'")


class EngineError(Exception):
    """The engine refused or could not be reached; the message says which and why."""


def client() -> docker.DockerClient:
    """The shared client for DOCKER_HOST (the local socket by default)."""
    global _client
    with _client_lock:
        if _client is None:
            try:
                # ssh:// through the ssh binary (keys and known_hosts as for ssh
                # itself), not paramiko; tcp:// honours DOCKER_TLS_VERIFY and
                # DOCKER_CERT_PATH as the docker CLI does.
                _client = docker.from_env(timeout=int(API_TIMEOUT), max_pool_size=POOL_SIZE,
                                          use_ssh_client=True)
            except docker.errors.DockerException as exc:
                raise EngineError(f"cannot reach the Docker engine at {engine_address()}: "
                                  f"{_reason(exc)}") from None
        return _client


def forget_client() -> None:
    """Drop the shared client (after a connection failure) so the next call makes a new one."""
    global _client
    with _client_lock:
        old, _client = _client, None
    if old is not None:
        with contextlib.suppress(Exception):
            old.close()


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc)
    text = str(exc)
    # The SDK nests urllib3's errors in requests' in its own: the OS's words are the
    # useful part ("Connection refused", "No such file or directory").
    found = _OS_REASON.search(text) or _OS_REASON_TUPLE.search(text)
    if found:
        return found.group(1).strip()
    return text.strip(" ()'\"") or type(exc).__name__


def _api_call(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except docker.errors.APIError:
        raise
    except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
        forget_client()
        raise EngineError(f"{what}: cannot reach the Docker engine at {engine_address()}: "
                          f"{_reason(exc)}") from None


# -- start ---------------------------------------------------------------------

@dataclass(frozen=True)
class Started:
    """A container created and started for one component."""

    id: str
    name: str
    removed: tuple[str, ...]


def container_name(instance: str, component_id: str) -> str:
    return f"cc-{instance[:8]}-{component_id}"


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (dotenv syntax); a KEY without a value takes the supervisor's."""
    try:
        values = dotenv_values(path)
    except OSError as exc:
        raise EngineError(f"cannot read env_file {path}: {exc.strerror or exc}") from None
    if not path.is_file():
        raise EngineError(f"env_file {path} does not exist")
    env = {}
    for key, value in values.items():
        if value is None:
            value = os.environ.get(key)
            if value is None:
                continue
        env[key] = value
    return env


def remove_leftovers(instance: str, component_id: str) -> list[str]:
    """Remove the component's earlier container and every container of an earlier run.

    Returns one line per container removed.
    """
    api = client().api
    found = _api_call("listing containers", api.containers, all=True,
                      filters={"label": f"{LABEL_INSTANCE}={instance}"})
    lines = []
    for item in found:
        labels = item.get("Labels") or {}
        mine = labels.get(LABEL_COMPONENT) == component_id
        earlier_run = labels.get(LABEL_RUN) != RUN_TOKEN
        if not (mine or earlier_run):
            continue  # another component of this run: not ours to touch
        name = (item.get("Names") or ["?"])[0].lstrip("/")
        try:
            _api_call("removing a leftover container", api.remove_container, item["Id"],
                      force=True)
        except docker.errors.NotFound:
            continue  # another start removed it first
        why = "of an earlier run" if earlier_run else "left from its last run"
        lines.append(f"removed container {name} ({item.get('State', '?')}, component "
                     f"{labels.get(LABEL_COMPONENT, '?')!r}) {why}")
    return lines


def _mounts(specs: list[Mapping[str, Any]], config_dir: Path) -> list[docker.types.Mount]:
    mounts = []
    for spec in specs:
        source = spec["source"]
        if spec["type"] == "bind":
            source = str((config_dir / Path(source).expanduser()).resolve())
        mounts.append(docker.types.Mount(target=spec["target"], source=source or None,
                                         type=spec["type"], read_only=spec["read_only"]))
    return mounts


def _ensure_image(image: str, pull: str) -> None:
    api = client().api
    try:
        _api_call("inspecting the image", api.inspect_image, image)
        return
    except docker.errors.ImageNotFound:
        if pull == "never":
            raise EngineError(f"image {image!r} is not on the engine (pull = \"never\")") from None
    try:
        # The SDK splits "repo:tag" and "repo@digest" itself (no tag: latest).
        _api_call("pulling the image", api.pull, image)
        _api_call("inspecting the image", api.inspect_image, image)
    except docker.errors.APIError as exc:
        raise EngineError(f"image {image!r} is not on the engine and pulling it failed: "
                          f"{_reason(exc)}") from None


def create_and_start(*, component_id: str, instance: str, options: Mapping[str, Any],
                     config_dir: Path, stop_timeout: float) -> Started:
    """Remove leftovers, then create and start the component's container."""
    removed = remove_leftovers(instance, component_id)
    for line in removed:
        log.warning("%s: %s", component_id, line)
    _ensure_image(options["image"], options["pull"])
    env: dict[str, str] = {}
    if options["env_file"]:
        env.update(read_env_file(config_dir / Path(options["env_file"]).expanduser()))
    env.update(options["env"])
    api = client().api
    host_config = api.create_host_config(
        network_mode=options["network"],
        port_bindings=options["ports"] or None,
        mounts=_mounts(options["mounts"], config_dir) or None,
        mem_limit=options["memory_max"],
        # The restart policy is the supervisor's, not the engine's.
        restart_policy={"Name": "no"},
        log_config=docker.types.LogConfig(type="json-file", config={
            "max-size": ENGINE_LOG_MAX, "max-file": "2"}),
    )
    labels = {**options["labels"], LABEL_INSTANCE: instance, LABEL_COMPONENT: component_id,
              LABEL_RUN: RUN_TOKEN}
    name = container_name(instance, component_id)
    try:
        made = _api_call(
            "creating the container", api.create_container, options["image"],
            command=options["command"], name=name, environment=env or None,
            user=options["user"], labels=labels, host_config=host_config,
            ports=list(options["ports"]) or None, stop_timeout=docker_stop_grace(stop_timeout))
    except docker.errors.APIError as exc:
        raise EngineError(f"cannot create the container: {_reason(exc)}") from None
    cid = made["Id"]
    try:
        _api_call("starting the container", api.start, cid)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            api.remove_container(cid, force=True)
        if isinstance(exc, docker.errors.APIError):
            raise EngineError(f"cannot start the container: {_reason(exc)}") from None
        raise
    _stats.latest(cid)  # the first sample is on its way before the first probe
    return Started(id=cid, name=name, removed=tuple(removed))


def docker_stop_grace(stop_timeout: float) -> int:
    """Whole seconds for `docker stop` inside the component's stop_timeout."""
    return max(0, int(stop_timeout - STOP_MARGIN))


# -- probe -----------------------------------------------------------------------

@dataclass(frozen=True)
class Observation:
    """One look at a container: its state, health and figures."""

    status: str
    health: str | None
    health_output: str | None
    exit_code: int | None
    oom_killed: bool
    cpu_percent: float | None
    memory_mb: float | None
    pids: int | None


class _StatsCache:
    """The engine's latest figures per container, fetched beside the probe, not in it.

    A one-shot stats request waits for the engine's next collection cycle
    (measured on dockerd 20.10: 1.0 s, as long as the default probe_timeout),
    so the probe never waits for one: it takes the last sample that arrived
    and starts the next fetch in a thread of its own (one at a time per
    container). The figures are therefore up to one probe interval plus a
    second old.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: container id -> (previous sample, latest sample, a fetch under way)
        self._entries: dict[str, list[Any]] = {}

    def latest(self, container_id: str) -> tuple[Mapping[str, Any] | None,
                                                 Mapping[str, Any] | None]:
        """(previous, latest) samples; starts a fetch unless one is under way."""
        with self._lock:
            entry = self._entries.setdefault(container_id, [None, None, False])
            previous, current, busy = entry
            if not busy:
                entry[2] = True
                threading.Thread(target=self._fetch, args=(container_id,), daemon=True,
                                 name=f"docker-stats-{container_id[:12]}").start()
        return previous, current

    def _fetch(self, container_id: str) -> None:
        sample = None
        try:
            sample = client().api.stats(container_id, stream=False, one_shot=True)
        except Exception as exc:  # the next probe tries again; inspect reports the engine
            log.debug("stats of %s failed: %s", container_id[:12], _reason(exc))
        with self._lock:
            entry = self._entries.get(container_id)
            if entry is None:
                return  # forgotten meanwhile
            if isinstance(sample, dict) and sample.get("read", "").startswith("0001-"):
                sample = None  # the container stopped before the engine read it
            if sample is not None:
                entry[0], entry[1] = entry[1], sample
            entry[2] = False

    def forget(self, container_id: str) -> None:
        with self._lock:
            self._entries.pop(container_id, None)


_stats = _StatsCache()


def _timestamp(text: str) -> float | None:
    """Seconds since the epoch of the engine's RFC 3339 time (nanoseconds kept to µs)."""
    if not text or text.startswith("0001-"):
        return None
    head, _, frac = text.rstrip("Z").partition(".")
    with contextlib.suppress(ValueError):
        base = datetime.fromisoformat(head + "+00:00").timestamp()
        return base + (float("0." + frac) if frac.isdigit() else 0.0)
    return None


def observe(container_id: str) -> Observation:
    """State and health (inspect, waited for) and the last CPU, memory, pids (stats)."""
    api = client().api
    info = _api_call("inspecting the container", api.inspect_container, container_id)
    state = info.get("State") or {}
    status = state.get("Status", "unknown")
    health = state.get("Health") or {}
    output = None
    if health.get("Log"):
        output = (health["Log"][-1].get("Output") or "").strip()[-300:] or None
    cpu = memory = pids = None
    if status == "running":
        previous, current = _stats.latest(container_id)
        if current is not None:
            cpu = _cpu_percent(previous, current, _timestamp(state.get("StartedAt", "")))
            memory = _memory_mb(current)
            pids = (current.get("pids_stats") or {}).get("current")
    else:
        _stats.forget(container_id)
    return Observation(status=status, health=health.get("Status"), health_output=output,
                       exit_code=state.get("ExitCode"), oom_killed=bool(state.get("OOMKilled")),
                       cpu_percent=cpu, memory_mb=memory, pids=pids)


def _usage(sample: Mapping[str, Any] | None) -> tuple[int, float] | None:
    if sample is None:
        return None
    usage = ((sample.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
    read = _timestamp(sample.get("read", ""))
    return (usage, read) if isinstance(usage, int) and read is not None else None


def _cpu_percent(previous: Mapping[str, Any] | None, current: Mapping[str, Any],
                 started: float | None) -> float | None:
    """Percent of one CPU (like psutil's) between two samples, or since the start."""
    now, before = _usage(current), _usage(previous)
    if now is None:
        return None
    if before is not None and now[1] > before[1] and now[0] >= before[0]:
        return round((now[0] - before[0]) / ((now[1] - before[1]) * 1e9) * 100, 1)
    if started is None or now[1] <= started:
        return None
    return round(now[0] / ((now[1] - started) * 1e9) * 100, 1)


def _memory_mb(stats: Mapping[str, Any]) -> float | None:
    mem = stats.get("memory_stats") or {}
    usage = mem.get("usage")
    if not isinstance(usage, int):
        return None
    detail = mem.get("stats") or {}
    # What `docker stats` shows: page cache that can be dropped is not counted
    # (cgroup v1 reports total_inactive_file, v2 inactive_file).
    cache = detail.get("total_inactive_file", detail.get("inactive_file", 0))
    if isinstance(cache, int) and cache < usage:
        usage -= cache
    return round(usage / 2**20, 1)


def forget(container_id: str) -> None:
    """Drop what is kept of a container that is gone."""
    _stats.forget(container_id)
