"""Fault injection on supervised processes, through a real `python -m core`.

Children are killed with SIGKILL, crash in a loop, ignore SIGTERM, leave
grandchildren behind that escape with setsid(), and write to a full disk.
Each test states the promise of DESIGN.md it would catch the loss of.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from tests.faults.helpers import (
    ROOT,
    Core,
    alive,
    by_env,
    component,
    start,
    wait_for,
    write_config,
)


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def live_children(core: Core) -> dict[str, list[int]]:
    """The supervisor's live children, by the FAULT_COMP tag of their environment."""
    try:
        kids = psutil.Process(core.pid).children()
    except psutil.NoSuchProcess:
        return {}
    return by_env(kids, "FAULT_COMP")


# -- SIGKILL storm ----------------------------------------------------------------

KILL_COMPONENTS = 5
KILL_ROUNDS = 20
KILL_INTERVAL = 0.1


@pytest.mark.slow
def test_hundred_sigkills_restart_each_child_once(tmp_path: Path, cores: list[Core]) -> None:
    """100 kill -9s over 5 components: 100 restarts, one process per component at
    any time, and no snapshot shows a dead pid later than one interval after its death."""
    body = "".join(component(f"c{i}", "import time; time.sleep(600)", stable_after=0.0,
                             env={"FAULT_COMP": f"c{i}"}) for i in range(KILL_COMPONENTS))
    core = start(cores, write_config(tmp_path, body, interval=KILL_INTERVAL))
    seen: list[tuple[float, dict[str, int | None]]] = []
    doubles: list[dict[str, list[int]]] = []
    done = threading.Event()

    def watch() -> None:
        # Reads the snapshot and the process table as fast as it can, in parallel
        # with the kills: what a dashboard would have shown, and what really ran.
        with contextlib.suppress(Exception):
            while not done.is_set():
                snap = core.status()
                seen.append((ts(snap["metrics"]["timestamp"]),
                             {cid: c["pid"] for cid, c in snap["components"].items()}))
                groups = live_children(core)
                if any(len(pids) > 1 for pids in groups.values()):
                    doubles.append(groups)
                time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    killed: dict[int, float] = {}
    try:
        for _ in range(KILL_ROUNDS):
            pids = wait_for(lambda: _fresh_pids(core, killed), 10, "every component restarted")
            groups = live_children(core)
            assert {cid: [pid] for cid, pid in pids.items()} == groups
            for pid in pids.values():
                os.kill(pid, signal.SIGKILL)
                killed[pid] = time.time()
        wait_for(lambda: _fresh_pids(core, killed), 10, "the last restarts")
    finally:
        done.set()
        watcher.join(10)
    assert len(killed) == KILL_COMPONENTS * KILL_ROUNDS
    views = core.get("/api/components")["components"]
    assert [v["restarts"] for v in views] == [KILL_ROUNDS] * KILL_COMPONENTS
    assert all(v["state"] == "running" and v["exit_code"] is None for v in views)
    assert doubles == []
    stale = [(pid, round(snap_ts - killed[pid], 3)) for snap_ts, pids in seen
             for pid in pids.values() if pid in killed and snap_ts > killed[pid] + KILL_INTERVAL]
    assert stale == [], "snapshots showed dead pids (pid, seconds after the kill)"
    assert len(seen) > KILL_ROUNDS  # the watcher really watched
    for cid in (f"c{i}" for i in range(KILL_COMPONENTS)):
        started = [n for n in core.notes(cid) if "-> running: started pid" in n]
        assert len(started) == KILL_ROUNDS + 1
    core.signal(signal.SIGTERM)
    assert core.wait_exit(15) == 0
    assert core.leftovers() == []


def _fresh_pids(core: Core, killed: dict[int, float]) -> dict[str, int] | None:
    comps = core.status()["components"]
    pids = {cid: c["pid"] for cid, c in comps.items()}
    if all(c["state"] == "running" for c in comps.values()) and all(
            pid and pid not in killed for pid in pids.values()):
        return pids
    return None


# -- crash loop ---------------------------------------------------------------------

CRASH_DELAYS = [0.05, 0.1, 0.2] + [0.4] * 8  # backoff_initial 0.05, factor 2, max 0.4


@pytest.mark.slow
def test_crash_loop_backs_off_gives_up_and_costs_little_cpu(tmp_path: Path,
                                                            cores: list[Core]) -> None:
    """A child that exits at once forever: delays grow as configured, the component
    ends in `error` saying why, and the supervisor does not spin meanwhile."""
    body = component("crashy", "import sys; sys.exit(3)", backoff_initial=0.05,
                     backoff_factor=2.0, backoff_max=0.4,
                     max_failures=len(CRASH_DELAYS) + 1) + component("steady", "import time; "
                                                                     "time.sleep(600)")
    core = start(cores, write_config(tmp_path, body, interval=0.25))
    proc = psutil.Process(core.pid)
    began, cpu0 = time.monotonic(), sum(proc.cpu_times()[:2])
    waits: list[float] = []

    def gave_up() -> bool:
        view = core.comp("crashy")
        if view["next_restart_in"] is not None:
            waits.append(view["next_restart_in"])
        return view["state"] == "error"

    wait_for(gave_up, 15, "crashy to give up", step=0.1)
    wall, cpu = time.monotonic() - began, sum(proc.cpu_times()[:2]) - cpu0
    view = core.comp("crashy")
    assert view["error"] == (f"gave up after {len(CRASH_DELAYS) + 1} quick failures in a row "
                             "(last: exited with status 3); start it again to retry")
    assert view["exit_code"] == 3 and view["pid"] is None
    assert view["restarts"] == len(CRASH_DELAYS)
    assert waits and max(waits) <= max(CRASH_DELAYS)
    notes = core.get("/api/components/crashy/logs?lines=5000")["lines"]
    delays = [float(m.group(1)) for n in notes
              if (m := re.search(r"restarting in ([\d.]+) s", n["text"]))]
    assert delays == CRASH_DELAYS
    # Each restart really waited its delay (time between consecutive starts).
    starts = [ts(n["time"]) for n in notes if "-> running: started pid" in n["text"]]
    assert len(starts) == len(CRASH_DELAYS) + 1
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(gap >= d - 0.01 for gap, d in zip(gaps, CRASH_DELAYS, strict=True)), gaps
    assert wall > 2.0  # the loop was observed, not just its end
    # Not a figure (that is `bench/core_bench.py crashloop`, a few % of a core):
    # a bound only a runaway loop crosses, a spin or a restart without its delay.
    assert cpu / wall < 0.6, f"supervisor used {cpu:.2f} s of CPU in {wall:.2f} s"
    # The other component never noticed.
    assert core.comp("steady")["state"] == "running"
    assert core.comp("steady")["restarts"] == 0
    core.signal(signal.SIGTERM)
    assert core.wait_exit(15) == 0


# -- stubborn children and escaping grandchildren ----------------------------------

IGNORE_TERM = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); "

# A child that ignores SIGTERM with two grandchildren that do too: one in its
# process group, one that setsid()s away holding the child's stdout pipe.
STUBBORN = IGNORE_TERM + """
import os, subprocess, sys, time
keep = subprocess.Popen([sys.executable, "-c", "import signal, time; "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('gc ready', flush=True); "
    "time.sleep(600)"])
away = subprocess.Popen([sys.executable, "-c", "import os, signal, time; os.setsid(); "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('gc ready', flush=True); "
    "time.sleep(600)"])
print("kids", keep.pid, away.pid, flush=True)
time.sleep(600)
"""

# A double fork: the middle process exits, the grandchild (new session,
# stdout still the pipe, SIGTERM ignored) is orphaned and adopted by the
# supervisor (subreaper); the child itself lives on.
DAEMONIZE = IGNORE_TERM + """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        print("kids", os.getpid(), flush=True)
        time.sleep(600)
    os._exit(0)
time.sleep(600)
"""


def _kids(core: Core, cid: str) -> list[int]:
    def find() -> list[int] | None:
        for line in core.get(f"/api/components/{cid}/logs")["lines"]:
            if line["stream"] == "stdout" and line["text"].startswith("kids "):
                return [int(x) for x in line["text"].split()[1:]]
        return None

    try:
        return wait_for(find, 10, f"{cid} to report its grandchildren")
    except AssertionError as exc:
        lines = core.get(f"/api/components/{cid}/logs")["lines"]
        raise AssertionError(f"{exc}: {lines}") from None


@pytest.mark.slow
def test_stop_ends_stubborn_children_and_escaped_grandchildren(tmp_path: Path,
                                                               cores: list[Core]) -> None:
    """Stop leaves no process behind and is bounded by stop_timeout plus a small margin,
    whatever the child and its grandchildren do with SIGTERM and setsid()."""
    stop_timeout = 1.0
    body = (component("stubborn", STUBBORN, stop_timeout=stop_timeout)
            + component("daemon", DAEMONIZE, stop_timeout=stop_timeout))
    core = start(cores, write_config(tmp_path, body))
    pids = core.running_pids()
    family = {cid: [pids[cid], *_kids(core, cid)] for cid in pids}
    wait_for(lambda: sum(x["text"] == "gc ready" for x in core.get(
        "/api/components/stubborn/logs")["lines"]) == 2, 10, "grandchildren ignoring SIGTERM")
    assert all(alive(p) for p in family["stubborn"] + family["daemon"])
    for cid in ("stubborn", "daemon"):
        began = time.monotonic()
        view = core.post(f"/api/components/{cid}/stop")["component"]
        assert view["state"] in ("stopping", "stopped")
        core.wait_state(cid, lambda v: v["state"] == "stopped", stop_timeout + 3, "stopped")
        took = time.monotonic() - began
        # Bounded, and really escalated: SIGTERM alone ended nothing.
        assert stop_timeout - 0.2 < took < stop_timeout + 1.5, f"{cid}: stop took {took:.2f} s"
        left = [p for p in family[cid] if alive(p)]
        assert left == [], f"{cid}: processes left after stop: {left}"
        assert core.comp(cid)["pid"] is None
    core.signal(signal.SIGTERM)
    assert core.wait_exit(15) == 0
    assert core.leftovers() == []


# -- log files that cannot be written ---------------------------------------------

def test_full_disk_and_unwritable_log_file_keep_components_running(
        tmp_path: Path, cores: list[Core]) -> None:
    """A log file on a full disk (/dev/full) or one that cannot be opened: the
    component still runs, its `error` says what is wrong, output stays readable."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "full.log").symlink_to("/dev/full")
    (logs / "blocked.log").mkdir()  # a directory where the file should be: EISDIR
    chatty = "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.05)"
    body = (component("full", chatty) + component("blocked", chatty)
            + component("fine", chatty))
    core = start(cores, write_config(tmp_path, body))
    pids = core.running_pids()

    def errors() -> dict[str, str | None] | None:
        views = {cid: core.comp(cid) for cid in pids}
        found = {cid: v["error"] for cid, v in views.items()}
        return found if found["full"] and found["blocked"] else None

    found = wait_for(errors, 10, "the log errors to show")
    assert "log file: cannot write" in found["full"]
    assert "No space left on device" in found["full"]
    assert "log file: cannot write" in found["blocked"]
    assert "Is a directory" in found["blocked"]
    assert found["fine"] is None
    # Still running, same pids, output kept in memory and served.
    time.sleep(0.5)
    assert core.running_pids() == pids
    for cid in pids:
        lines = core.get(f"/api/components/{cid}/logs?lines=50")["lines"]
        assert sum(x["text"] == "tick" for x in lines) >= 3
    assert "tick" in (logs / "fine.log").read_text()
    core.signal(signal.SIGTERM)
    assert core.wait_exit(15) == 0


def test_log_dir_that_cannot_exist_does_not_stop_the_supervisor(
        tmp_path: Path, cores: list[Core]) -> None:
    """log_dir under a regular file (no directory can be made there; root-proof)."""
    (tmp_path / "plain").write_text("not a directory\n")
    body = component("a", "print('hello', flush=True); import time; time.sleep(600)")
    config = write_config(tmp_path, body, server='log_dir = "plain/logs"').read_text()
    # write_config puts its own log_dir first; keep only the broken one.
    config = config.replace('log_dir = "logs"\n', "", 1)
    path = tmp_path / "config.toml"
    path.write_text(config)
    core = start(cores, path)
    pids = core.running_pids()
    view = core.wait_state("a", lambda v: bool(v["error"]), 10, "the log error")
    assert "log file: cannot write" in view["error"] and "plain/logs/a.log" in view["error"]
    lines = core.get("/api/components/a/logs")["lines"]
    assert any(x["text"] == "hello" for x in lines)
    assert core.running_pids() == pids
    core.post("/api/components/a/restart")
    core.wait_state("a", lambda v: v["state"] == "running" and v["pid"] not in (
        None, pids["a"]), 10, "restarted")
    core.signal(signal.SIGTERM)
    assert core.wait_exit(15) == 0


# -- a child that floods its output ---------------------------------------------------

FLOOD = """
import os, sys, time
line = b"x" * 99 + b"\\n"
chunk = line * 640
end = time.monotonic() + 3.0
while time.monotonic() < end:
    os.write(1, chunk)
print("flood over", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_output_flood_keeps_ticks_and_memory_bounded(tmp_path: Path, cores: list[Core]) -> None:
    """A child writing as fast as it can: the snapshot keeps its cadence, REST keeps
    answering, the supervisor's memory stays bounded, the log file rotates."""
    interval = 0.25
    body = component("flood", FLOOD) + component("quiet", "import time; time.sleep(600)")
    config = write_config(tmp_path, body, interval=interval,
                          server="log_max_bytes = 1048576\nlog_backups = 2\n")
    core = start(cores, config)
    proc = psutil.Process(core.pid)
    rss0 = proc.memory_info().rss
    stamps: list[float] = []
    slowest = 0.0
    peak = rss0
    began = time.monotonic()
    while time.monotonic() - began < 2.5:
        t0 = time.monotonic()
        snap = core.status()
        slowest = max(slowest, time.monotonic() - t0)
        stamp = ts(snap["metrics"]["timestamp"])
        if not stamps or stamp != stamps[-1]:
            stamps.append(stamp)
        peak = max(peak, proc.memory_info().rss)
        time.sleep(0.02)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert max(gaps) < 2 * interval + 0.1, gaps
    assert slowest < 0.5, f"GET /api/status took {slowest:.2f} s during the flood"
    assert peak - rss0 < 100 * 2**20, f"supervisor grew by {(peak - rss0) / 2**20:.0f} MiB"
    wait_for(lambda: any(x["text"] == "flood over" for x in core.get(
        "/api/components/flood/logs?lines=5")["lines"]), 20, "the end of the flood")
    logs = tmp_path / "logs"
    assert (logs / "flood.log.1").is_file() and not (logs / "flood.log.3").exists()
    assert (logs / "flood.log").stat().st_size <= 1048576
    assert core.comp("quiet")["state"] == "running"
    core.signal(signal.SIGTERM)
    assert core.wait_exit(15) == 0


def test_data_dir_that_cannot_exist_is_an_operator_error(tmp_path: Path) -> None:
    """data_dir under a regular file: exit 2 naming the key, no traceback, nothing started."""
    (tmp_path / "plain").write_text("not a directory\n")
    marker = f"fault-{os.getpid()}-{time.monotonic_ns()}"
    body = component("a", "import time; time.sleep(600)", env={"FAULT_COMP": marker})
    path = write_config(tmp_path, body)
    path.write_text(path.read_text().replace('data_dir = "data"', 'data_dir = "plain/data"'))
    run = subprocess.run([sys.executable, "-m", "core", "--config", str(path)],
                         capture_output=True, text=True, timeout=30, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 2, run.stderr
    assert f"{path}: server.data_dir: cannot use {tmp_path}/plain/data: Not a directory" \
        in run.stderr
    assert "Traceback" not in run.stderr
    assert marker not in by_env(psutil.process_iter(), "FAULT_COMP")


def test_component_data_dir_that_cannot_be_made_fails_only_that_component(
        tmp_path: Path, cores: list[Core]) -> None:
    """A file where a component's data directory should be: that component ends in
    `error` saying so; the supervisor and the other component run on."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a").write_text("in the way\n")
    body = (component("a", "import time; time.sleep(600)", max_failures=2,
                      backoff_initial=0.05)
            + component("b", "import time; time.sleep(600)"))
    core = start(cores, write_config(tmp_path, body))
    view = core.wait_state("a", lambda v: v["state"] == "error", 10, "error")
    assert view["error"] == (f"gave up after 2 quick failures in a row (last: cannot create "
                             f"the data directory {tmp_path}/data/a: File exists); start it "
                             "again to retry")
    assert core.comp("b")["state"] == "running"
    core.signal(signal.SIGTERM)
    assert core.wait_exit(15) == 0


@pytest.mark.slow
def test_log_file_recovers_when_the_disk_frees(tmp_path: Path, cores: list[Core]) -> None:
    """Once the log file is writable again the error clears and logging resumes, with
    no restart of the component (the file is retried every few seconds)."""
    from core.logs import RETRY_SECONDS

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.log").symlink_to("/dev/full")
    chatty = "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.05)"
    core = start(cores, write_config(tmp_path, component("a", chatty)))
    pid = core.running_pids()["a"]
    core.wait_state("a", lambda v: bool(v["error"]), 5, "the log error")
    freed = tmp_path / "freed.log"
    freed.touch()
    tmp = logs / "a.log.tmp"
    tmp.symlink_to(freed)
    os.replace(tmp, logs / "a.log")  # the disk "frees": the same path now writable
    view = core.wait_state("a", lambda v: v["error"] is None, RETRY_SECONDS + 3, "recovery")
    assert view["pid"] == pid and view["restarts"] == 0
    text = freed.read_text()
    assert "log file writable again" in text
    wait_for(lambda: "tick" in freed.read_text(), 3, "output in the file again")
    core.signal(signal.SIGTERM)
    assert core.wait_exit(15) == 0
