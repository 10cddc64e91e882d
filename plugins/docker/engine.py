"""The docker plugin's side of the Docker Engine API: client, leftovers, start.

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
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import requests.exceptions

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
                                  f"{reason(exc)}") from None
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


def reason(exc: BaseException) -> str:
    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc)
    text = str(exc)
    # The SDK nests urllib3's errors in requests' in its own: the OS's words are the
    # useful part ("Connection refused", "No such file or directory").
    found = _OS_REASON.search(text) or _OS_REASON_TUPLE.search(text)
    if found:
        return found.group(1).strip()
    return text.strip(" ()'\"") or type(exc).__name__


def call(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except docker.errors.APIError:
        raise
    except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
        forget_client()
        raise EngineError(f"{what}: cannot reach the Docker engine at {engine_address()}: "
                          f"{reason(exc)}") from None


# -- start ---------------------------------------------------------------------

@dataclass(frozen=True)
class Started:
    """A container created and started for one component."""

    id: str
    name: str
    removed: tuple[str, ...]


def container_name(instance: str, component_id: str) -> str:
    return f"cc-{instance[:8]}-{component_id}"


def remove_leftovers(instance: str, component_id: str) -> list[str]:
    """Remove the component's earlier container and every container of an earlier run.

    Returns one line per container removed.
    """
    api = client().api
    found = call("listing containers", api.containers, all=True,
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
            call("removing a leftover container", api.remove_container, item["Id"],
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
        call("inspecting the image", api.inspect_image, image)
        return
    except docker.errors.ImageNotFound:
        if pull == "never":
            raise EngineError(f"image {image!r} is not on the engine (pull = \"never\")") from None
    try:
        # The SDK splits "repo:tag" and "repo@digest" itself (no tag: latest).
        call("pulling the image", api.pull, image)
        call("inspecting the image", api.inspect_image, image)
    except docker.errors.APIError as exc:
        raise EngineError(f"image {image!r} is not on the engine and pulling it failed: "
                          f"{reason(exc)}") from None


def create_and_start(*, component_id: str, instance: str, options: Mapping[str, Any],
                     config_dir: Path, stop_timeout: float,
                     env_file_env: Mapping[str, str] | None = None,
                     memory_max: int | None = None) -> Started:
    """Remove leftovers, then create and start the component's container.

    `memory_max` (bytes, the core's key) becomes the container's memory limit.
    """
    from plugins.docker.options import MIN_MEMORY

    if memory_max is not None and memory_max < MIN_MEMORY:
        raise EngineError(f"memory_max {memory_max // 2**20}M is below the engine's minimum "
                          "for a container (6M)")
    removed = remove_leftovers(instance, component_id)
    for line in removed:
        log.warning("%s: %s", component_id, line)
    _ensure_image(options["image"], options["pull"])
    # The core read env_file at config load; the component's own env wins.
    env = {**(env_file_env or {}), **options["env"]}
    api = client().api
    host_config = api.create_host_config(
        network_mode=options["network"],
        port_bindings=options["ports"] or None,
        mounts=_mounts(options["mounts"], config_dir) or None,
        mem_limit=memory_max,
        # The restart policy is the supervisor's, not the engine's.
        restart_policy={"Name": "no"},
        log_config=docker.types.LogConfig(type="json-file", config={
            "max-size": ENGINE_LOG_MAX, "max-file": "2"}),
    )
    labels = {**options["labels"], LABEL_INSTANCE: instance, LABEL_COMPONENT: component_id,
              LABEL_RUN: RUN_TOKEN}
    name = container_name(instance, component_id)
    try:
        made = call(
            "creating the container", api.create_container, options["image"],
            command=options["command"], name=name, environment=env or None,
            user=options["user"], labels=labels, host_config=host_config,
            ports=list(options["ports"]) or None, stop_timeout=docker_stop_grace(stop_timeout))
    except docker.errors.APIError as exc:
        raise EngineError(f"cannot create the container: {reason(exc)}") from None
    cid = made["Id"]
    try:
        call("starting the container", api.start, cid)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            api.remove_container(cid, force=True)
        if isinstance(exc, docker.errors.APIError):
            raise EngineError(f"cannot start the container: {reason(exc)}") from None
        raise
    return Started(id=cid, name=name, removed=tuple(removed))


def docker_stop_grace(stop_timeout: float) -> int:
    """Whole seconds for `docker stop` inside the component's stop_timeout."""
    return max(0, int(stop_timeout - STOP_MARGIN))
