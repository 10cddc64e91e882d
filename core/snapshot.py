"""Probes -> the snapshot document.

The OS figures of every running component (psutil) and the system figures
are read in one worker-thread call per tick: a pass over a few hundred
processes takes milliseconds and must never run on the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psutil

from core.model import PLUGIN_METRICS

#: Metrics a plugin contributes that are averaged, not summed, across components.
_AVERAGED = frozenset({"avg_latency_ms"})


def iso_utc(ts: float | None = None) -> str:
    """ISO-8601 UTC with a trailing Z, millisecond precision."""
    dt = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class ProcessStats:
    cpu_percent: float
    memory_mb: float


@dataclass(frozen=True)
class SystemStats:
    cpu_percent: float
    memory_percent: float
    processes: Mapping[int, ProcessStats]


class StatsReader:
    """Reads process and system figures; keeps one psutil.Process per pid.

    A fresh psutil.Process always reports cpu_percent 0.0, so the cache is
    what makes CPU figures meaningful. Not thread-safe: one reader, one thread
    at a time (the tick awaits each pass before starting the next).
    """

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}
        psutil.cpu_percent(None)  # prime: the first call always returns 0.0

    def read(self, pids: Iterable[int]) -> SystemStats:
        wanted = set(pids)
        for pid in list(self._procs):
            if pid not in wanted:
                del self._procs[pid]
        out: dict[int, ProcessStats] = {}
        for pid in wanted:
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                with proc.oneshot():
                    cpu = proc.cpu_percent(None)
                    rss = proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                self._procs.pop(pid, None)
                continue
            out[pid] = ProcessStats(cpu_percent=round(cpu, 1), memory_mb=round(rss / 2**20, 1))
        return SystemStats(
            cpu_percent=round(psutil.cpu_percent(None), 1),
            memory_percent=round(psutil.virtual_memory().percent, 1),
            processes=out,
        )


def merge_metrics(contributions: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Combine plugin metrics: counts and rates add up, latencies average."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for metrics in contributions:
        for key, value in metrics.items():
            if key not in PLUGIN_METRICS or isinstance(value, bool):
                continue
            if not isinstance(value, int | float) or value != value:  # NaN check
                continue
            sums[key] = sums.get(key, 0.0) + float(value)
            counts[key] = counts.get(key, 0) + 1
    merged: dict[str, float] = {}
    for key in PLUGIN_METRICS:
        if key not in sums:
            merged[key] = 0
        elif key in _AVERAGED:
            merged[key] = round(sums[key] / counts[key], 3)
        elif key in ("total_concepts", "total_associations"):
            merged[key] = int(sums[key])
        else:
            merged[key] = round(sums[key], 3)
    return merged


def build_document(components: Mapping[str, Mapping[str, Any]], system: SystemStats,
                   plugin_metrics: Iterable[Mapping[str, float]], now: float) -> dict[str, Any]:
    """The seed's snapshot document."""
    metrics: dict[str, Any] = {"timestamp": iso_utc(now)}
    metrics.update(merge_metrics(plugin_metrics))
    metrics["cpu_percent"] = system.cpu_percent
    metrics["memory_percent"] = system.memory_percent
    return {"components": dict(components), "metrics": metrics}
