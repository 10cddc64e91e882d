"""What the docker plugin's probe reads: a container's state, health and figures.

State and health come from one `inspect` per probe. CPU, memory and pids
come from the engine's stats, fetched beside the probe (see _StatsCache).
Called from the core's probe worker threads.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from plugins.docker.engine import call, client, log, reason


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
            log.debug("stats of %s failed: %s", container_id[:12], reason(exc))
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
    info = call("inspecting the container", api.inspect_container, container_id)
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


def prime(container_id: str) -> None:
    """Start fetching a new container's first sample, before its first probe."""
    _stats.latest(container_id)


def forget(container_id: str) -> None:
    """Drop what is kept of a container that is gone."""
    _stats.forget(container_id)
