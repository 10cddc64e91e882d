"""Probes -> the snapshot document.

The OS figures of every running component (one /proc read each) and the
system figures are read in one worker-thread call per tick: a pass over a
few hundred processes takes milliseconds and must never run on the event loop.
"""

from __future__ import annotations

import os
import resource
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


_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20

#: Up to this many children keep their /proc/PID/stat open between ticks
#: (one pread a tick instead of open, read, close); the rest open it each
#: time. A quarter of the descriptor limit at most: each child already holds
#: three (two pipes and a pidfd).
KEEP_OPEN = min(1024, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4)


def parse_stat(data: bytes) -> tuple[int, int, int] | None:
    """(start time, CPU ticks used, resident pages) from /proc/PID/stat; None for a zombie.

    One file has all three (utime, stime: fields 14-15; starttime: 22; rss: 24).
    """
    fields = data[data.rfind(b")") + 2:].split()
    if not fields or fields[0] == b"Z":
        return None
    return int(fields[19]), int(fields[11]) + int(fields[12]), int(fields[21])


def read_process(pid: int) -> tuple[int, int, int] | None:
    """parse_stat of `pid`, opened for this read alone; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return parse_stat(f.read())
    except (OSError, ValueError, IndexError):
        return None


class StatsReader:
    """Reads process and system figures; remembers each pid's last CPU sample.

    A process's first sample reports cpu_percent 0.0 (as psutil does): CPU
    use is a difference between two ticks. A pid whose start time changed is
    another process, and starts over; a kept-open stat file of a process that
    is gone fails to read rather than describe its pid's next owner. Not
    thread-safe: one reader, one thread at a time (the tick awaits each pass
    before starting the next).
    """

    def __init__(self) -> None:
        # pid -> (start time, CPU ticks, monotonic time of the sample)
        self._last: dict[int, tuple[int, int, float]] = {}
        self._files: dict[int, int] = {}
        psutil.cpu_percent(None)  # prime: the first call always returns 0.0

    def _sample(self, pid: int) -> tuple[int, int, int] | None:
        fd = self._files.get(pid)
        if fd is None:
            if len(self._files) >= KEEP_OPEN:
                return read_process(pid)
            try:
                fd = self._files[pid] = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
        try:
            return parse_stat(os.pread(fd, 1024, 0))
        except (OSError, ValueError, IndexError):
            self._files.pop(pid, None)
            os.close(fd)
            return None

    def read(self, pids: Iterable[int]) -> SystemStats:
        last = self._last
        now = time.monotonic()
        seen: dict[int, tuple[int, int, float]] = {}
        out: dict[int, ProcessStats] = {}
        for pid in pids:
            sample = self._sample(pid)
            if sample is None:
                continue
            start, ticks, pages = sample
            before = last.get(pid)
            cpu = 0.0
            if before is not None and before[0] == start and now > before[2]:
                cpu = (ticks - before[1]) / _TICKS / (now - before[2]) * 100
            seen[pid] = (start, ticks, now)
            out[pid] = ProcessStats(cpu_percent=round(cpu, 1),
                                    memory_mb=round(pages * _PAGE_MB, 1))
        self._last = seen
        for pid in [p for p in self._files if p not in seen]:
            os.close(self._files.pop(pid))
        return SystemStats(
            cpu_percent=round(psutil.cpu_percent(None), 1),
            memory_percent=round(psutil.virtual_memory().percent, 1),
            processes=out,
        )

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()

    def __del__(self) -> None:
        self.close()


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
