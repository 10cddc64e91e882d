"""Containers on a Docker engine as components.

    [components.web]
    plugin = "docker"
    image = "nginx:1.27"
    command = ["nginx", "-g", "daemon off;"]     # optional: the image's CMD otherwise
    env = { TZ = "UTC" }                         # over env_file's
    env_file = "web.env"                         # the core's key: dotenv, read at load
    mounts = ["./site:/usr/share/nginx/html:ro"] # or { type, source, target, read_only }
    network = "host"                             # default; "none" or a network name
    ports = ["127.0.0.1:8080:80"]                # only with a network of its own
    user = "101:101"
    memory_max = "256M"
    labels = { team = "web" }
    stop_timeout = 10                            # the core's key: docker stop's grace

The start hook (a worker thread of the core) removes leftovers, then creates
and starts the container through the Docker SDK, and hands the core a
Launch of follow.py: the process the core supervises, which copies the
container's output to its own and exits with the container's exit status.
So the container's output reaches the component's log tail and rotated log
file the way a process's does (the one public way a plugin's output reaches
the core: the launched process's stdout and stderr), and the core's restart
policy applies as to any process (the container's own policy is "no"). The
probe looks at the container's state, its Docker health status when the
image defines a HEALTHCHECK, and its CPU, memory and pids (stats API).
The stop hook only makes sure the follower is ready for the core's stop
signal, on which it runs `docker stop` within the component's stop_timeout,
then kill, then remove.

The engine is DOCKER_HOST's (the local socket by default; tcp:// and
ssh:// reach an engine on another machine). See docs/docker.md.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core import ComponentInfo, Launch, Probe, hookimpl
from plugins.docker.instance import instance_id
from plugins.docker.options import read_options

# The Docker SDK (with requests: several MB) is imported by the hooks that
# use it (engine, stats, follow), not when the plugin is loaded: a
# supervisor with no docker component never pays for it.

FOLLOW = Path(__file__).resolve().with_name("follow.py")
#: The longest the stop hook waits for a follower to catch its signals.
READY_WAIT = 5.0

#: component id -> its current container's id (the last start of this process).
_containers: dict[str, str] = {}
#: Components whose stop hook ran since their last start: their container going
#: away is the stop itself, not something for the probe to report.
_stopping: set[str] = set()


def _instance(component: ComponentInfo) -> str:
    # The core gives each component data_dir/<id>: the parent is its data directory.
    return instance_id(component.data_dir.parent)


def _stop_timeout(component: ComponentInfo) -> float:
    return float(getattr(component, "stop_timeout", 10.0))


@hookimpl
def validate_config(component_id: str, options: Mapping[str, Any]) -> Mapping[str, Any]:
    return read_options(options)


@hookimpl
def start(component: ComponentInfo) -> Launch:
    from plugins.docker import engine, stats

    stop_timeout = _stop_timeout(component)
    _stopping.discard(component.id)
    started = engine.create_and_start(
        component_id=component.id, instance=_instance(component), options=component.options,
        config_dir=component.config_dir, stop_timeout=stop_timeout,
        env_file_env=component.env_file_env, memory_max=component.memory_max)
    old = _containers.get(component.id)
    if old is not None:
        stats.forget(old)
    _containers[component.id] = started.id
    stats.prime(started.id)
    argv = [sys.executable, str(FOLLOW), started.id,
            "--grace", str(engine.docker_stop_grace(stop_timeout)),
            "--note", f"container {started.name} ({started.id[:12]}) started from image "
                      f"{component.options['image']} on {engine.engine_address()}"]
    for line in started.removed:
        argv += ["--note", line]
    return Launch(argv=tuple(argv))


def _catches_stop_signals(pid: int) -> bool | None:
    """Whether `pid` has its handlers for the stop signals yet; None once it is gone."""
    from plugins.docker.follow import STOP_SIGNALS

    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    caught = int(line.split()[1], 16)
                    return all(caught >> (sig - 1) & 1 for sig in STOP_SIGNALS)
    except (FileNotFoundError, ProcessLookupError):
        return None
    return False


@hookimpl
def stop(component: ComponentInfo, pid: int) -> None:
    """Wait until the follower catches the stop signal, so that the core's signal
    that comes next is a docker stop and not the follower's death.

    A Python process installs its handlers some 30 ms after it was spawned (a
    stop right after a start would otherwise kill it then, leaving the
    container running until the next start). The core bounds this hook by
    half the stop_timeout; the follower normally is ready long before.
    """
    _stopping.add(component.id)
    deadline = time.monotonic() + min(READY_WAIT, _stop_timeout(component) / 2)
    while _catches_stop_signals(pid) is False and time.monotonic() < deadline:
        time.sleep(0.005)


@hookimpl
def probe(component: ComponentInfo, pid: int) -> Probe | None:
    import docker.errors

    from plugins.docker import engine, stats

    if component.id in _stopping:
        return None  # being stopped: the follower reports the end, not the probe
    cid = _containers.get(component.id)
    if cid is None:
        return Probe(healthy=False, error="no container is known for this component")
    try:
        seen = stats.observe(cid)
    except engine.EngineError as exc:
        return Probe(healthy=False, error=str(exc))
    except docker.errors.NotFound:
        return Probe(healthy=False, error=f"container {cid[:12]} is gone")
    metrics: dict[str, float] = {}
    if seen.cpu_percent is not None:
        metrics["cpu_percent"] = seen.cpu_percent
    if seen.memory_mb is not None:
        metrics["memory_mb"] = seen.memory_mb
    if seen.pids is not None:
        metrics["pids"] = seen.pids
    if seen.status != "running":
        why = f"container is {seen.status}"
        if seen.status == "exited":
            why += f" (status {seen.exit_code}{', out of memory' if seen.oom_killed else ''})"
        return Probe(healthy=False, error=why, metrics=metrics)
    if seen.health in (None, "none", "healthy"):
        return Probe(healthy=True, metrics=metrics)
    detail = f": {seen.health_output}" if seen.health_output else ""
    return Probe(healthy=False, error=f"Docker health check {seen.health}{detail}",
                 metrics=metrics)
