"""The per-tick readers: core.kept, core.snapshot.StatsReader, Containment.figures.

Real children, real /proc and (where this machine lets us make them) real
cgroups. The readers skip the parse of a text that did not change since the
last tick; these tests check that what they skip is what a full read gives.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from core.containment import Containment
from core.kept import KeptFiles
from core.snapshot import (
    MAX_CPU_PERCENT,
    ProcessStats,
    StatsReader,
    cpu_percent,
    machine_cpu_times,
    memory_used_percent,
)
from tests import cgroups

# Allocates about 40 MB, says so, then spins until killed.
SPIN = ("import sys; keep = bytearray(40 * 2**20); keep[::4096] = b'x' * len(keep[::4096]);"
        " print('ready', flush=True)\nwhile True: pass")


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def spinner() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", SPIN], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    yield proc
    proc.kill()
    proc.wait()
    proc.stdout.close()


def _until(check, seconds: float = 10.0):  # type: ignore[no-untyped-def]
    """check() until it gives something true, bounded; fails with what it last gave."""
    deadline = time.monotonic() + seconds
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            assert got, got
            return got
        time.sleep(0.02)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_kept_file_is_read_afresh_and_closed_when_its_process_is_gone(
        sleeper: subprocess.Popen[bytes]) -> None:
    files = KeptFiles(limit=8)
    path = f"/proc/{sleeper.pid}/stat"
    first = files.read(path)
    assert first.startswith(f"{sleeper.pid} (sleep) ".encode())
    # One descriptor, read again (the text itself may differ: the sleeper may
    # still be starting, its page faults counted in it).
    assert files.read(path).startswith(f"{sleeper.pid} (sleep) ".encode())
    assert len(files) == 1
    os.kill(sleeper.pid, signal.SIGSTOP)
    _until(lambda: files.read(path).split()[2] == b"T")  # the kernel's current text
    sleeper.kill()
    sleeper.wait()
    with pytest.raises(OSError):
        files.read(path)
    assert len(files) == 0


def test_kept_files_unread_in_a_pass_are_closed_and_the_limit_holds(
        sleeper: subprocess.Popen[bytes]) -> None:
    files = KeptFiles(limit=1)
    files.read(f"/proc/{sleeper.pid}/stat")
    assert files.read(f"/proc/{sleeper.pid}/statm")  # past the limit: read, not kept
    assert len(files) == 1
    files.sweep()
    assert len(files) == 1  # read since the last sweep
    files.sweep()
    assert len(files) == 0
    files.read("/proc/self/stat")
    files.close()
    assert len(files) == 0


def test_an_idle_process_uses_no_cpu_and_keeps_its_memory(
        sleeper: subprocess.Popen[bytes]) -> None:
    _until(lambda: _state(sleeper.pid) == "S")  # started, now asleep
    reader = StatsReader()
    first = reader.read([sleeper.pid]).processes[sleeper.pid]
    again = reader.read([sleeper.pid]).processes[sleeper.pid]
    assert first.cpu_percent == again.cpu_percent == 0.0
    assert again.memory_mb == first.memory_mb > 0
    reader.close()


# Two threads, both asleep: the leader's run time does not speak for the other.
TWO_THREADS = ("import threading, time\n"
               "threading.Thread(target=time.sleep, args=(60,)).start()\n"
               "print('ready', flush=True)\ntime.sleep(60)")


def _reads(reader: StatsReader, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files `reader` reads from now on, as they are read."""
    reads: list[str] = []
    real = reader._files.read
    monkeypatch.setattr(reader._files, "read", lambda path: reads.append(path) or real(path))
    return reads


def test_a_process_of_one_thread_that_did_not_run_is_not_read_until_the_reread(
        sleeper: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    from core import snapshot

    monkeypatch.setattr(snapshot, "SKIP_READS", 3)
    pid = sleeper.pid
    _until(lambda: _state(pid) == "S")
    reader = StatsReader()
    reads = _reads(reader, monkeypatch)
    stat, schedstat = f"/proc/{pid}/stat", f"/proc/{pid}/schedstat"
    first = reader.read([pid])
    assert reads == [schedstat, stat]
    for _ in range(3):
        reads.clear()
        again = reader.read([pid])
        assert reads == [schedstat]  # it did not run: its stat is not read
        assert again.processes == first.processes and again.idle == {pid}
        assert len(reader._files) == 2  # both stay open
    reads.clear()
    assert reader.read([pid]).processes == first.processes
    assert reads == [schedstat, stat]  # the reread after SKIP_READS
    # One that ran is read at once: a stop and a continue make it run.
    os.kill(pid, signal.SIGSTOP)
    _until(lambda: _state(pid) == "T")
    reads.clear()
    reader.read([pid])
    assert reads == [schedstat, stat]
    os.kill(pid, signal.SIGCONT)
    reader.close()


def test_a_process_of_several_threads_is_read_every_pass(
        monkeypatch: pytest.MonkeyPatch) -> None:
    proc = subprocess.Popen([sys.executable, "-c", TWO_THREADS], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        reader = StatsReader()
        reader.read([proc.pid])
        reads = _reads(reader, monkeypatch)
        for _ in range(3):
            reads.clear()
            assert reader.read([proc.pid]).processes[proc.pid].memory_mb > 0
            assert reads == [f"/proc/{proc.pid}/stat"]
        reader.close()
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_a_busy_process_shows_its_cpu_and_memory_and_a_stopped_one_none(
        spinner: subprocess.Popen[bytes]) -> None:
    reader = StatsReader()
    reader.read([spinner.pid])
    busy = _until(lambda: reader.read([spinner.pid]).processes[spinner.pid].cpu_percent > 5)
    figures = reader.read([spinner.pid]).processes[spinner.pid]
    assert figures.memory_mb > 40
    assert busy
    os.kill(spinner.pid, signal.SIGSTOP)
    # The reads just after the stop may still count the last clock ticks
    # (they can land late), but never more than every core; then none.
    stopped = ProcessStats(0.0, figures.memory_mb)

    def settled() -> bool:
        got = reader.read([spinner.pid]).processes[spinner.pid]
        assert 0.0 <= got.cpu_percent <= MAX_CPU_PERCENT, got
        return got == stopped

    _until(settled)
    reader.close()


def test_cpu_is_bounded_by_every_core_however_close_two_reads_are() -> None:
    # One 10 ms clock tick landing between two reads 30 us apart.
    assert cpu_percent(0.01, 0.00003) == MAX_CPU_PERCENT == 100.0 * (os.cpu_count() or 1)
    assert cpu_percent(0.5, 2.0) == 25.0
    assert cpu_percent(-0.01, 2.0) == 0.0


def test_a_gone_process_is_left_out_and_its_descriptor_closed(
        sleeper: subprocess.Popen[bytes]) -> None:
    reader = StatsReader()
    assert sleeper.pid in reader.read([sleeper.pid]).processes
    sleeper.kill()
    sleeper.wait()
    assert reader.read([sleeper.pid]).processes == {}
    assert len(reader._files) == 0
    reader.close()


STAT = (b"cpu  100 20 30 400 50 6 7 8 9 10\n"
        b"cpu0 50 10 15 200 25 3 3 4 4 5\n")


def test_machine_figures_are_counted_as_psutil_counts_them() -> None:
    # total: user..steal (guest already inside user and nice); busy: less idle and iowait.
    assert machine_cpu_times(STAT) == (100 + 20 + 30 + 6 + 7 + 8, 621)
    meminfo = b"MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    250 kB\n"
    assert memory_used_percent(meminfo) == 75.0
    figures = StatsReader().read([])
    assert 0.0 <= figures.cpu_percent <= 100.0 and 0.0 < figures.memory_percent < 100.0


@pytest.fixture
def containment() -> Iterator[Containment]:
    if (why := cgroups.why_not()) is not None:
        pytest.skip(f"cgroups cannot be made here: {why}")
    made = Containment.open(f"control-center-test-{uuid.uuid4().hex[:8]}", enabled=True)
    assert made.tree is not None
    yield made
    made.close()


def _in_run(containment: Containment, cid: str, command: str) -> subprocess.Popen[bytes]:
    assert containment.tree is not None
    run = containment.tree.new_run(cid, None, None)
    proc = subprocess.Popen(["sh", "-c", f"echo 0 > {run.procs_file}; exec {command}"],
                            start_new_session=True)
    _until(lambda: proc.pid in run.pids())
    return proc


GROWS_ON_USR1 = ("import signal, subprocess, sys; signal.signal(signal.SIGUSR1, lambda *a:"
                 " subprocess.Popen([sys.executable, \"-c\", \"x = bytearray(30 * 2**20);"
                 " x[::4096] = bytes(len(x[::4096])); import time; time.sleep(60)\"]))\n"
                 "while True: signal.pause()")


def test_cgroup_figures_of_an_idle_component_stay_and_count_a_newcomer(
        containment: Containment) -> None:
    assert containment.tree is not None
    # A leader that waits alone in its cgroup; on SIGUSR1 it starts a child
    # that takes 30 MB, in the same cgroup.
    proc = _in_run(containment, "c", f"{sys.executable} -c '{GROWS_ON_USR1}'")
    pid = proc.pid
    _until(lambda: _state(pid) == "S")
    reader = StatsReader()
    try:
        def figures() -> ProcessStats:
            return containment.figures([("c", pid, None)], reader.read([pid])).processes[pid]

        alone = figures()
        assert figures().memory_mb == alone.memory_mb  # the leader's memory, read twice
        run = containment.tree.current["c"]
        os.kill(pid, signal.SIGUSR1)
        _until(lambda: len(run.pids()) >= 2)
        grown = _until(lambda: (f := figures()).memory_mb > alone.memory_mb + 25 and f)
        assert grown.memory_mb > alone.memory_mb + 25
    finally:
        reader.close()
        containment.tree.group("c").kill()
        proc.wait(10)


def test_an_idle_leader_alone_in_its_cgroup_is_not_read_until_the_reread(
        containment: Containment, monkeypatch: pytest.MonkeyPatch) -> None:
    from core import containment as containment_mod

    assert containment.tree is not None
    proc = _in_run(containment, "c", f"{sys.executable} -c '{GROWS_ON_USR1}'")
    pid = proc.pid
    _until(lambda: _state(pid) == "S")
    reads: list[str] = []
    kept = containment._files
    real_read = kept.read
    monkeypatch.setattr(kept, "read", lambda path: reads.append(path) or real_read(path))
    monkeypatch.setattr(containment_mod, "SKIP_READS", 3)
    reader = StatsReader()
    try:
        def figures() -> ProcessStats:
            return containment.figures([("c", pid, None)], reader.read([pid])).processes[pid]

        first = figures()
        if containment.enforced("memory"):
            pytest.skip("memory.current is read every tick with the memory controller")
        assert len(reads) == 2  # cpu.stat and the run's cgroup.procs
        reads.clear()
        for _ in range(3):
            assert figures() == first  # alone and idle: not read
        assert reads == []
        assert len(kept) == 2  # its files stay open through the ticks without a read
        figures()  # the reread after SKIP_READS
        assert len(reads) == 2
        reads.clear()
        # A leader that ran (here: it forks a child into its cgroup) is read at once.
        os.kill(pid, signal.SIGUSR1)
        run = containment.tree.current["c"]
        _until(lambda: len(run.pids()) >= 2)
        grown = _until(lambda: (f := figures()).memory_mb > first.memory_mb + 25 and f)
        assert grown.memory_mb > first.memory_mb + 25 and reads
    finally:
        reader.close()
        containment.tree.group("c").kill()
        proc.wait(10)


# Runs in its own process: no descriptor left, then the table is read again.
NO_DESCRIPTOR_LEFT = """
import os, resource, sys
sys.path.insert(0, os.getcwd())
from core.proctable import scan
first = scan()
assert os.getpid() in first.parents
highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (highest, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
try:
    os.open("/proc/self/stat", os.O_RDONLY)
except OSError as exc:
    print(exc.strerror)
print(scan() is first)
"""


def test_the_process_table_without_a_descriptor_left_is_the_last_one_read() -> None:
    # A stop reads the table first; out of descriptors it must go on, not fail.
    out = subprocess.run([sys.executable, "-c", NO_DESCRIPTOR_LEFT], capture_output=True,
                         text=True, timeout=30, cwd=os.path.dirname(os.path.dirname(
                             os.path.dirname(os.path.abspath(__file__)))))
    assert out.stdout.split("\n")[:2] == ["Too many open files", "True"], out.stderr


def test_while_no_process_of_the_tree_runs_none_of_their_files_is_read(
        containment: Containment, monkeypatch: pytest.MonkeyPatch) -> None:
    from core import snapshot

    assert containment.tree is not None
    if containment.enforced("memory"):
        pytest.skip("memory.current is read every tick with the memory controller")
    monkeypatch.setattr(snapshot, "SKIP_READS", 3)
    procs = [_in_run(containment, cid, "sleep 60") for cid in ("a", "b")]
    pids = [p.pid for p in procs]
    group_cpu = containment.tree.cpu_stat
    reader = StatsReader()
    reads = _reads(reader, monkeypatch)
    kept = containment._files
    real_read = kept.read
    monkeypatch.setattr(kept, "read", lambda path: reads.append(path) or real_read(path))
    rows = [("a", pids[0], None), ("b", pids[1], None)]
    try:
        for pid in pids:
            _until(lambda pid=pid: _state(pid) == "S")  # type: ignore[misc]

        def figures() -> tuple[bool, dict[int, ProcessStats]]:
            stats = reader.read(pids, group_cpu)
            return stats.quiet, dict(containment.figures(rows, stats).processes)

        full = figures()[1]
        assert set(full) == set(pids) and all(f.memory_mb > 0 for f in full.values())
        _until(lambda: figures()[0])  # the tree's cpu.stat read the same twice
        for _ in range(2):
            reads.clear()
            quiet, got = figures()
            assert quiet and got == full
            assert reads == [group_cpu]  # the tree's CPU only: not a file of theirs
        # One of them runs (a stop): the next pass reads them again.
        os.kill(pids[0], signal.SIGSTOP)
        _until(lambda: _state(pids[0]) == "T")
        reads.clear()
        quiet, got = figures()
        assert not quiet and set(got) == set(pids)
        assert f"/proc/{pids[0]}/schedstat" in reads and f"/proc/{pids[0]}/stat" in reads
        os.kill(pids[0], signal.SIGCONT)
    finally:
        reader.close()
        for cid, proc in zip(("a", "b"), procs, strict=True):
            containment.tree.group(cid).kill()
            proc.wait(10)


def test_a_quiet_tree_is_read_in_full_after_the_skipped_passes(
        containment: Containment, monkeypatch: pytest.MonkeyPatch) -> None:
    from core import snapshot

    assert containment.tree is not None
    monkeypatch.setattr(snapshot, "SKIP_READS", 2)
    proc = _in_run(containment, "a", "sleep 60")
    reader = StatsReader()
    try:
        _until(lambda: _state(proc.pid) == "S")
        reader.read([proc.pid], containment.tree.cpu_stat)
        _until(lambda: reader.read([proc.pid], containment.tree.cpu_stat).quiet)
        reads = _reads(reader, monkeypatch)
        passes = []
        for _ in range(4):
            reads.clear()
            passes.append((reader.read([proc.pid], containment.tree.cpu_stat).quiet,
                           f"/proc/{proc.pid}/stat" in reads))
        # The pass that was quiet above was the first skipped; one more, then
        # its stat is read (SKIP_READS = 2), then quiet again.
        assert passes[:3] == [(True, False), (False, True), (True, False)]
    finally:
        reader.close()
        containment.tree.group("a").kill()
        proc.wait(10)
