"""Probes -> the snapshot document.

The OS figures of every running component (one /proc read each) and the
system figures are read in one worker-thread call per tick: a pass over a
few hundred processes takes milliseconds and must never run on the event loop.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from core.kept import KeptFiles
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
    #: The pids whose /proc/PID/stat read the same as at the last pass, or
    #: that did not run since (StatsReader): they used less than a clock tick
    #: of CPU, and kept their memory.
    idle: frozenset[int] = frozenset()
    #: No process of the cgroup that holds them all ran since the last pass
    #: (StatsReader.read's group_cpu): none of their files was read.
    quiet: bool = False


#: A process of one thread whose run time (/proc/PID/schedstat, a third of the
#: kernel's work of its stat) did not change since its stat was read did not
#: run: its figures are the last ones, without reading its stat again, up to
#: this many passes in a row (a read then catches memory the kernel took back
#: from a process that slept meanwhile).
SKIP_READS = 15

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20

#: The most CPU a process (or a tree) can use: every core. CPU time is counted
#: in 10 ms clock ticks and can land late; one tick between two reads a few
#: microseconds apart (a tick asked for just after the scheduled one) would
#: read as thousands of percent.
MAX_CPU_PERCENT = 100.0 * (os.cpu_count() or 1)


def cpu_percent(used_seconds: float, elapsed: float) -> float:
    """CPU use over `elapsed` seconds, in percent of one core, within 0..MAX_CPU_PERCENT."""
    return round(min(MAX_CPU_PERCENT, max(0.0, used_seconds / elapsed * 100)), 1)


def parse_stat(data: bytes) -> tuple[int, int, int, int] | None:
    """(start time, CPU ticks used, resident pages, threads) from /proc/PID/stat;
    None for a zombie.

    One file has them all (utime, stime: fields 14-15; num_threads: 20;
    starttime: 22; rss: 24).
    """
    fields = data[data.rfind(b")") + 2:].split()
    if not fields or fields[0] == b"Z":
        return None
    return int(fields[19]), int(fields[11]) + int(fields[12]), int(fields[21]), int(fields[17])


def machine_cpu_times(text: bytes) -> tuple[int, int]:
    """(busy, total) ticks of all CPUs from /proc/stat, counted as psutil counts them.

    total: user nice system idle iowait irq softirq steal (guest time is
    already inside user and nice); busy: total less idle and iowait.
    """
    fields = [int(x) for x in text[:text.index(b"\n")].split()[1:9]]
    total = sum(fields)
    return total - fields[3] - (fields[4] if len(fields) > 4 else 0), total


def memory_used_percent(text: bytes) -> float:
    """(MemTotal - MemAvailable) / MemTotal from /proc/meminfo, as psutil reports it."""
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(b":")
        if key in (b"MemTotal", b"MemAvailable"):
            values[key] = int(rest.split()[0])
            if len(values) == 2:
                break
    total = values[b"MemTotal"]
    return (total - values[b"MemAvailable"]) / total * 100 if total else 0.0


@dataclass(slots=True)
class _Sample:
    """What StatsReader keeps of a pid between two passes (its own: changed in place)."""

    text: bytes  # its /proc/PID/stat
    start: int  # its start time: another one is another process
    ticks: int  # CPU ticks used
    mono: float  # when
    figures: ProcessStats  # its figures if it did not run: no CPU, the same memory
    ran: bytes | None  # its /proc/PID/schedstat, read just before `text`
    skipped: int  # passes in a row its stat was not read
    single: bool  # one thread: schedstat tells whether the process ran

    def again(self, mono: float, skipped: int, ran: bytes | None = None) -> _Sample:
        """This sample, taken again at `mono` with nothing changed."""
        self.mono = mono
        self.skipped = skipped
        if ran is not None:
            self.ran = ran
        return self


class StatsReader:
    """Reads process and system figures; remembers each pid's last CPU sample.

    A process's first sample reports cpu_percent 0.0 (as psutil does): CPU
    use is a difference between two ticks. A pid whose start time changed is
    another process, and starts over (a kept-open stat file of a process that
    is gone fails to read and is opened afresh: the pid's next owner has
    another start time). A text that did not change since the last pass is
    not parsed again: the process used no CPU and kept its memory; and a
    process of one thread that did not run since (SKIP_READS) is not read
    again at all. Not thread-safe: one reader, one thread at a time (the tick
    awaits each pass before starting the next).
    """

    def __init__(self) -> None:
        self._last: dict[int, _Sample] = {}
        # The group cpu.stat of the last pass and its text (read()'s group_cpu).
        self._group: tuple[str, bytes | None] | None = None
        # Each child's /proc/PID/stat, and schedstat for a process of one
        # thread, kept open (one pread a tick).
        self._files = KeptFiles()
        self._machine = KeptFiles()
        self._cpu = self._machine_cpu()

    def _machine_cpu(self) -> tuple[int, int]:
        return machine_cpu_times(self._machine.read("/proc/stat"))

    def _machine_figures(self) -> tuple[float, float]:
        """This machine's CPU use since the last pass, and memory in use (percent)."""
        busy, total = self._machine_cpu()
        before_busy, before_total = self._cpu
        self._cpu = busy, total
        cpu = (busy - before_busy) / (total - before_total) * 100 if total > before_total else 0.0
        memory = memory_used_percent(self._machine.read("/proc/meminfo"))
        return min(100.0, max(0.0, cpu)), memory

    def _quiet(self, pids: list[int], group_cpu: str,
               text: bytes | None) -> dict[int, _Sample] | None:
        """The samples of `pids` taken again if none of them ran since the last
        pass (their cgroup's cpu.stat reads the same), each within SKIP_READS;
        else None."""
        if text is None or self._group != (group_cpu, text):
            return None
        last = self._last
        quiet = {}
        for pid in pids:
            before = last.get(pid)
            if before is None or before.skipped >= SKIP_READS:
                return None
            quiet[pid] = before
        now = time.monotonic()
        for sample in quiet.values():
            sample.again(now, sample.skipped + 1)
        return quiet

    def _read(self, path: str) -> bytes | None:
        try:
            return self._files.read(path)
        except OSError:
            return None

    def read(self, pids: Iterable[int], group_cpu: str | None = None) -> SystemStats:
        """The figures of `pids` and of the machine.

        group_cpu: the cpu.stat of a cgroup that holds every one of `pids`
        (core.containment's tree). While its text stays the same, none of
        them ran: their last figures stand and not one of their files is
        read, up to SKIP_READS passes in a row for each.
        """
        pids = list(pids)
        last = self._last
        files = self._files
        now = time.monotonic()
        seen: dict[int, _Sample] = {}
        out: dict[int, ProcessStats] = {}
        idle = []
        if group_cpu is not None:
            group_text = self._read(group_cpu)
            quiet = self._quiet(pids, group_cpu, group_text)
            self._group = (group_cpu, group_text)
            if quiet is not None:
                # No sweep: the files not read in this pass are those of the
                # next one, and a later sweep closes what that one does not read.
                self._last = quiet
                cpu, memory = self._machine_figures()
                return SystemStats(cpu_percent=round(cpu, 1),
                                   memory_percent=round(memory, 1),
                                   processes={pid: sample.figures
                                              for pid, sample in quiet.items()},
                                   idle=frozenset(quiet), quiet=True)
        else:
            self._group = None
        for pid in pids:
            before = last.get(pid)
            # Its run time first: a run between the two reads shows next pass.
            ran = None
            if before is None or before.single:
                ran = self._read(f"/proc/{pid}/schedstat")
                if (ran is not None and before is not None and ran == before.ran
                        and before.skipped < SKIP_READS):
                    files.keep(f"/proc/{pid}/stat")
                    seen[pid] = before.again(now, before.skipped + 1)
                    out[pid] = before.figures
                    idle.append(pid)
                    continue
            text = self._read(f"/proc/{pid}/stat")
            if text is None:
                continue
            if before is not None and before.text == text:
                # Not a byte changed (an idle process): no CPU used, the same
                # memory, nothing to parse.
                seen[pid] = before.again(now, 0, ran)
                out[pid] = before.figures
                idle.append(pid)
                continue
            try:
                sample = parse_stat(text)
            except (ValueError, IndexError):
                sample = None
            if sample is None:  # a zombie
                continue
            start, ticks, pages, threads = sample
            cpu = 0.0
            if before is not None and before.start == start and now > before.mono:
                cpu = cpu_percent((ticks - before.ticks) / _TICKS, now - before.mono)
            memory = round(pages * _PAGE_MB, 1)
            figures = ProcessStats(0.0, memory)
            seen[pid] = _Sample(text, start, ticks, now, figures, ran, 0, threads == 1)
            out[pid] = ProcessStats(cpu_percent=cpu, memory_mb=memory) if cpu else figures
        self._last = seen
        files.sweep()
        cpu, memory = self._machine_figures()
        return SystemStats(cpu_percent=round(cpu, 1), memory_percent=round(memory, 1),
                           processes=out, idle=frozenset(idle))

    def close(self) -> None:
        self._files.close()
        self._machine.close()

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
