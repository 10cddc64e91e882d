"""RunRecord: a crashed run's leftovers are ended at the next start, nothing else is."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from core.leftovers import AlreadyRunning, RunRecord
from tests.core.helpers_process import REPO, alive, py, wait_gone

# A supervisor that spawns and records, then is killed with SIGKILL by the test:
#  A: a recorded child in its own session, polite (ends on SIGTERM);
#  B: A's child, same session, not recorded, ignores SIGTERM;
#  D: spawned through ChildProcess by the recorded child C, then setsid()ed away:
#     C dies with the supervisor (death signal), D only carries the run's marker.
CRASHING = """
import subprocess, sys, trio
from pathlib import Path
sys.path.insert(0, {repo!r})
from core.leftovers import RunRecord
from core.logs import LogTail
from core.process import ChildProcess

IGNORE = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
          "print('ready', flush=True); time.sleep(60)")
record = RunRecord(Path({path!r}))
assert record.end_leftovers() == []

async def main():
    a = subprocess.Popen([sys.executable, "-c", f'''
import subprocess, sys, time
b = subprocess.Popen([sys.executable, "-c", {{IGNORE!r}}], stdout=subprocess.PIPE, text=True)
b.stdout.readline()
print(b.pid, flush=True)
time.sleep(60)
'''], start_new_session=True, stdout=subprocess.PIPE, text=True)
    b = int(a.stdout.readline())
    record.add("alpha", a.pid)
    log = LogTail(None)
    async with trio.open_nursery() as n:
        c = await ChildProcess.spawn(n, [sys.executable, "-c", f'''
import subprocess, sys, time
d = subprocess.Popen([sys.executable, "-c", {{IGNORE!r}}], start_new_session=True,
                     stdout=subprocess.PIPE, text=True)
d.stdout.readline()
print(d.pid, flush=True)
time.sleep(60)
'''], cwd=None, env=None, log=log)
        record.add("gamma", c.pid)
        while not log.since(0):
            await log.wait_after(0)
        d = int(log.since(0)[0].text)
        print(a.pid, b, c.pid, d, flush=True)
        await trio.sleep(60)

trio.run(main)
"""


@pytest.fixture
def run_json(tmp_path: Path) -> Path:
    return tmp_path / "data" / ".control-center" / "run.json"


@pytest.fixture
def started() -> Iterator[list[int]]:
    """Pids a test started outside our process tree: killed at the end whatever happens."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_leftovers_of_a_killed_supervisor_are_ended(run_json: Path, started: list[int]) -> None:
    script = subprocess.Popen(py(CRASHING.format(repo=str(REPO), path=str(run_json))),
                              stdout=subprocess.PIPE, text=True)
    assert script.stdout is not None
    try:
        a, b, c, d = (int(x) for x in script.stdout.readline().split())
        started += [a, b, c, d]
    finally:
        script.kill()
        script.wait()
        script.stdout.close()
    assert wait_gone([c], 2.0) == []  # the death signal took the child itself
    assert all(alive(pid) for pid in (a, b, d))

    began = time.monotonic()
    lines = RunRecord(run_json).end_leftovers(timeout=0.5)
    assert time.monotonic() - began < 3.0
    assert wait_gone([a, b, d], 1.0) == []
    by_pid = {int(line.split()[1]): line for line in lines}
    assert set(by_pid) == {a, b, d}
    assert "component 'alpha'" in by_pid[a] and "ended (SIGTERM)" in by_pid[a]
    assert "session of component 'alpha'" in by_pid[b] and "SIGKILL after 0.5 s" in by_pid[b]
    assert "started by the previous run" in by_pid[d] and "SIGKILL" in by_pid[d]
    doc = json.loads(run_json.read_text())
    assert doc["children"] == {} and doc["supervisor"]["pid"] == os.getpid()


def test_a_recycled_pid_is_not_touched(run_json: Path, started: list[int]) -> None:
    # An unrelated process now has the recorded pid, but it started at another time.
    other = subprocess.Popen(py("import time; time.sleep(60)"), start_new_session=True)
    started.append(other.pid)
    created = psutil.Process(other.pid).create_time()
    run_json.parent.mkdir(parents=True)
    run_json.write_text(json.dumps({
        "supervisor": {"pid": 999999999, "create_time": 1.0, "run_id": "1-100"},
        "children": {str(other.pid): {"component": "old", "create_time": created - 100,
                                      "sid": other.pid}},
    }))
    assert RunRecord(run_json).end_leftovers(timeout=0.5) == []
    assert alive(other.pid)
    other.kill()
    other.wait()


def test_another_supervisor_on_the_same_data_dir(run_json: Path) -> None:
    holder = subprocess.Popen(
        py(f"import sys; sys.path.insert(0, {str(REPO)!r}); from pathlib import Path; "
           f"from core.leftovers import RunRecord; r = RunRecord(Path({str(run_json)!r})); "
           f"r.end_leftovers(); print('ready', flush=True); sys.stdin.read()"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline() == "ready\n"
        with pytest.raises(AlreadyRunning, match=f"pid {holder.pid}") as info:
            RunRecord(run_json).end_leftovers()
        assert info.value.pid == holder.pid
    finally:
        holder.stdin.close()
        holder.wait()
        holder.stdout.close()
    # It exited: the data directory is free again.
    record = RunRecord(run_json)
    assert record.end_leftovers() == []
    record.close()


def test_add_and_remove_are_atomic_and_cheap(run_json: Path, started: list[int]) -> None:
    record = RunRecord(run_json)
    assert record.end_leftovers() == []
    procs = [subprocess.Popen(py("import time; time.sleep(60)")) for _ in range(3)]
    started += [p.pid for p in procs]
    for i, p in enumerate(procs):
        record.add(f"c{i}", p.pid)
    doc = json.loads(run_json.read_text())
    assert set(doc["children"]) == {str(p.pid) for p in procs}
    assert doc["children"][str(procs[1].pid)]["component"] == "c1"
    assert doc["children"][str(procs[1].pid)]["sid"] == os.getsid(0)
    record.remove(procs[1].pid)
    record.remove(123456789)  # unknown: nothing happens
    assert set(json.loads(run_json.read_text())["children"]) == {
        str(procs[0].pid), str(procs[2].pid)}
    # 200 components: each spawn rewrites the whole record.
    began = time.perf_counter()
    for i in range(200):
        record.add(f"x{i}", procs[0].pid if i % 2 else procs[2].pid)
    assert time.perf_counter() - began < 2.0
    assert sorted(p.name for p in run_json.parent.iterdir()) == ["run.json", "run.lock"]
    for p in procs:
        p.kill()
        p.wait()
    record.close()
    assert json.loads(run_json.read_text())["children"] == {}
    RunRecord(run_json).end_leftovers()  # the lock was released by close()


def test_an_unreadable_record_is_ignored(run_json: Path) -> None:
    run_json.parent.mkdir(parents=True)
    run_json.write_text("{not json")
    record = RunRecord(run_json)
    assert record.end_leftovers() == []
    assert json.loads(run_json.read_text())["supervisor"]["pid"] == os.getpid()
    record.close()


def test_a_record_of_this_very_process_ends_nothing(run_json: Path, started: list[int]) -> None:
    first = RunRecord(run_json)
    first.end_leftovers()
    mine = subprocess.Popen(py("import time; time.sleep(60)"), start_new_session=True)
    started.append(mine.pid)
    first.add("mine", mine.pid)
    del first  # released without close(), as when a supervisor object is dropped
    assert RunRecord(run_json).end_leftovers(timeout=0.5) == []
    assert alive(mine.pid)
    mine.kill()
    mine.wait()
