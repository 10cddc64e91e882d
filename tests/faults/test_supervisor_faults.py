"""Fault injection on the supervisor itself, through a real `python -m core`.

The supervisor is SIGKILLed, SIGTERMed at awkward moments (while components
start, while they stop, in the middle of a storm of REST restarts), given a
third-party plugin that raises, hangs or answers garbage in each hook, and a
broken config on SIGHUP. Each test names the promise of DESIGN.md it guards.
"""

from __future__ import annotations

import itertools
import math
import random
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
import psutil
import pytest

from tests.faults.helpers import (
    PY,
    SLEEP,
    Core,
    alive,
    by_env,
    component,
    plugin_env,
    plugin_site,
    start,
    wait_for,
    watch_for_doubles,
    write_config,
)


def started_pids(core: Core) -> dict[str, list[int]]:
    """Every "started pid N" the supervisor logged, per component (from its stderr)."""
    found: dict[str, list[int]] = {}
    for m in re.finditer(r"INFO (\S+): starting -> running \(started pid (\d+)\)",
                         core.stderr()):
        found.setdefault(m.group(1), []).append(int(m.group(2)))
    return found


def tagged(cid: str, **keys: object) -> str:
    """A sleeper whose processes carry FAULT_COMP=<cid> in their environment."""
    return component(cid, SLEEP, env={"FAULT_COMP": cid}, **keys)


# -- the supervisor SIGKILLed ---------------------------------------------------

# Prints the pid of a grandchild that setsid()s away: the death signal takes the
# child with the supervisor, not this grandchild; only the run record can find it.
ESCAPER = """
import subprocess, sys, time
g = subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep(600)"],
                     stdout=subprocess.DEVNULL)
print("kids", g.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_sigkilled_supervisor_takes_children_and_next_start_ends_leftovers(
        tmp_path: Path, cores: list[Core]) -> None:
    """kill -9 of the supervisor with 10 components: every child gone within 2 s; the
    next start ends the grandchild that escaped and starts all 10 cleanly."""
    body = "".join(tagged(f"c{i}") for i in range(9)) + component("escaper", ESCAPER)
    config = write_config(tmp_path, body)
    first = start(cores, config)
    pids = first.running_pids()
    assert len(pids) == 10
    line = wait_for(lambda: [x["text"] for x in first.get("/api/components/escaper/logs")[
        "lines"] if x["text"].startswith("kids ")], 10, "the escaper's grandchild")
    grandchild = int(line[0].split()[1])
    first.proc.kill()
    first.proc.wait(5)
    began = time.monotonic()
    wait_for(lambda: not any(alive(p) for p in pids.values()), 2.0,
             "every child to die with the supervisor")
    assert time.monotonic() - began < 2.0
    assert alive(grandchild)  # what the death signal cannot reach
    second = start(cores, config)
    assert first.leftovers() == []
    assert not alive(grandchild)
    ended = [x for x in second.stderr().splitlines() if "ended a leftover" in x]
    assert len(ended) == 1 and f"pid {grandchild} " in ended[0], second.stderr()
    new = second.running_pids()
    assert set(new) == set(pids) and not set(new.values()) & set(pids.values())
    views = second.get("/api/components")["components"]
    assert all(v["restarts"] == 0 and v["error"] is None for v in views)
    assert all(len(v) == 1 for v in started_pids(second).values())
    second.signal(signal.SIGTERM)
    assert second.wait_exit(15) == 0
    assert second.leftovers() == [] and not any(alive(p) for p in new.values())


# -- SIGTERM at awkward moments ----------------------------------------------------

def _assert_clean_exit(core: Core, timeout: float) -> None:
    began = time.monotonic()
    code = core.wait_exit(timeout)
    assert code == 0, core.stderr()[-3000:]
    assert "stopped cleanly" in core.stderr()
    assert core.leftovers() == [], f"left running after {time.monotonic() - began:.1f} s"
    # Once shutdown began, a component whose start was already under way may
    # still come up (then stops); none comes up twice, and each ends stopped.
    after = core.stderr().split("stopping every component", 1)[1]
    moves = re.findall(r"INFO (\S+): \w+ -> (\w+) ", after)
    for cid in {c for c, _ in moves}:
        mine = [state for c, state in moves if c == cid]
        assert mine.count("running") <= 1 and mine[-1] == "stopped", (cid, mine, after)


@pytest.mark.slow
def test_sigterm_while_components_start(tmp_path: Path, cores: list[Core]) -> None:
    """SIGTERM while start hooks are still running and dependents wait for a
    dependency that never gets healthy: exit 0, nothing left, nothing started late."""
    site = plugin_site(tmp_path)
    body = "".join(f'[components.slow{i}]\nplugin = "faulty"\nstart_delay = 1.0\n\n'
                   for i in range(4))
    body += component("unready", SLEEP, health_tcp="127.0.0.1:9", start_timeout=60.0)
    body += tagged("waiter", depends_on=["unready"])
    body += component("crashy", "import sys; sys.exit(1)", backoff_initial=30.0,
                      backoff_max=30.0)
    core = start(cores, write_config(tmp_path, body), env=plugin_env(site))
    core.wait_state("crashy", lambda v: v["next_restart_in"] is not None, 5, "backing off")
    view = core.comp("waiter")
    assert view["state"] == "starting" and "waiting for unready" in view["error"]
    assert core.comp("slow0")["pid"] is None  # its start hook is still sleeping
    began = time.monotonic()
    core.signal(signal.SIGTERM)
    _assert_clean_exit(core, 10)
    assert time.monotonic() - began < 5.0
    # No slow start hook had returned, the waiter's dependency never got ready.
    assert set(started_pids(core)) == {"unready", "crashy"}
    assert len(started_pids(core)["crashy"]) == 1  # its 30 s backoff was cut short
    # A start hook that returned after the shutdown began spawned nothing.
    time.sleep(1.0)
    assert core.leftovers() == []


@pytest.mark.slow
def test_sigterm_while_components_stop(tmp_path: Path, cores: list[Core]) -> None:
    """SIGTERM while stubborn components are stopping: the stops finish within their
    stop_timeout, the rest stops too, exit 0 with nothing left."""
    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ready', flush=True); time.sleep(600)")
    body = "".join(component(f"s{i}", stubborn, stop_timeout=1.5) for i in range(3))
    body += "".join(tagged(f"t{i}") for i in range(3))
    core = start(cores, write_config(tmp_path, body))
    pids = core.running_pids()
    for i in range(3):
        wait_for(lambda i=i: any(x["text"] == "ready" for x in core.get(
            f"/api/components/s{i}/logs")["lines"]), 10, "SIGTERM ignored")
    for i in range(3):
        assert core.post(f"/api/components/s{i}/stop")["component"]["state"] == "stopping"
    began = time.monotonic()
    core.signal(signal.SIGTERM)
    _assert_clean_exit(core, 10)
    took = time.monotonic() - began
    assert 1.0 < took < 1.5 + 2.0  # the stubborn ones did hold the exit up, bounded
    assert not any(alive(p) for p in pids.values())


@pytest.mark.slow
def test_sigterm_during_a_restart_storm(tmp_path: Path, cores: list[Core]) -> None:
    """Concurrent REST restarts (bounded: 8 clients, 120 calls) and a SIGTERM in the
    middle: never two processes for one component, exit 0, nothing left."""
    body = "".join(tagged(f"r{i}", stop_timeout=2.0) for i in range(5))
    core = start(cores, write_config(tmp_path, body, interval=0.1))
    core.running_pids()
    calls = 0
    lock = threading.Lock()
    term_after = 40

    def restart(n: int) -> int | None:
        nonlocal calls
        rng = random.Random(n)
        with httpx.Client(base_url=core.url, timeout=10) as client:
            for _ in range(15):
                with lock:
                    calls += 1
                    if calls == term_after:
                        core.signal(signal.SIGTERM)
                try:
                    resp = client.post(f"/api/components/r{rng.randrange(5)}/restart")
                except httpx.HTTPError:
                    return None  # the server went away: expected after SIGTERM
                if resp.status_code == 503:  # refused: shutdown has begun
                    assert "shutting down" in resp.json()["error"]
                    continue
                assert resp.status_code == 200, resp.text
        return None

    with watch_for_doubles(core.pid) as doubles:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(restart, range(8)))
        _assert_clean_exit(core, 15)
    assert calls >= term_after
    assert doubles == []
    assert sum(len(v) for v in started_pids(core).values()) > 5  # restarts did happen


def test_superseded_start_and_stop_requests_return(tmp_path: Path, cores: list[Core]) -> None:
    """A start answered by a stop (and a stop by a start) while a stubborn child is
    still stopping: every request returns promptly, the last one decides."""
    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ready', flush=True); time.sleep(600)")
    core = start(cores, write_config(tmp_path, component("s", stubborn, stop_timeout=2.0)))
    wait_for(lambda: any(x["text"] == "ready" for x in core.get(
        "/api/components/s/logs")["lines"]), 10, "SIGTERM ignored")
    assert core.post("/api/components/s/stop")["component"]["state"] == "stopping"
    with httpx.Client(base_url=core.url, timeout=10) as other, ThreadPoolExecutor(1) as pool:
        began = time.monotonic()
        pending = pool.submit(other.post, "/api/components/s/start")
        time.sleep(0.5)  # the start arrives and waits (nothing to observe until it returns)
        assert not pending.done()
        assert core.post("/api/components/s/stop")["component"]["state"] == "stopping"
        t_stop = time.monotonic() - began
        answer = pending.result(10)
        t_start = time.monotonic() - began
        assert answer.status_code == 200
        assert t_start - t_stop < 0.5, (t_stop, t_start, answer.json())
    view = core.wait_state("s", lambda v: v["state"] == "stopped", 5, "stopped")
    assert view["pid"] is None  # the stop came last: it stays stopped
    time.sleep(0.3)
    assert core.comp("s")["state"] == "stopped"
    core.signal(signal.SIGTERM)
    assert core.wait_exit(10) == 0


# -- a misbehaving third-party plugin -----------------------------------------------

FAULTY = {
    "raise_start": 'raise_in = "start"\nmax_failures = 2\nbackoff_initial = 0.05\n',
    "hang_start": 'hang_in = "start"\nstart_timeout = 0.5\nmax_failures = 1\n',
    "raise_probe": 'raise_in = "probe"\n',
    "hang_probe": 'hang_in = "probe"\nprobe_timeout = 0.2\n',
    "garbage": "garbage_probe = true\n",
    "raise_stop": 'raise_in = "stop"\nstop_timeout = 1.0\n',
    "hang_stop": 'hang_in = "stop"\nstop_timeout = 1.0\n',
}
INTERVAL = 0.2


def test_unrunnable_launch_fails_only_its_component(tmp_path: Path, cores: list[Core]) -> None:
    """A start hook returning a Launch with a non-string env value or a NUL byte in
    argv: a start failure of that component with a clear error, not a crash."""
    site = plugin_site(tmp_path)
    body = "".join(f'[components.{kind}]\nplugin = "faulty"\nbad_launch = "{kind}"\n'
                   f'max_failures = 1\n\n' for kind in ("env", "nul"))
    body += tagged("good")
    core = start(cores, write_config(tmp_path, body), env=plugin_env(site))
    for kind in ("env", "nul"):
        view = core.wait_state(kind, lambda v: v["state"] == "error", 10, "error")
        assert "plugin 'faulty' start hook returned a Launch that cannot be run" in \
            view["error"], view
    assert core.comp("good")["state"] == "running"
    core.signal(signal.SIGTERM)
    assert core.wait_exit(15) == 0
    assert core.leftovers() == []


@pytest.mark.slow
def test_misbehaving_plugin_affects_only_its_components(tmp_path: Path,
                                                        cores: list[Core]) -> None:
    """A plugin found through its entry point raises, hangs or answers garbage in each
    hook: each fault shows in its own component's `error`, the others keep their cadence."""
    site = plugin_site(tmp_path)
    body = "".join(f'[components.{cid}]\nplugin = "faulty"\n{keys}\n'
                   for cid, keys in FAULTY.items())
    body += tagged("good")
    core = start(cores, write_config(tmp_path, body, interval=INTERVAL), env=plugin_env(site))
    error = core.wait_state("raise_start", lambda v: v["state"] == "error", 10, "error")
    assert error["error"] == ("gave up after 2 quick failures in a row (last: plugin 'faulty' "
                              "start hook failed: RuntimeError: boom in start); start it "
                              "again to retry")
    error = core.wait_state("hang_start", lambda v: v["state"] == "error", 10, "error")
    assert "plugin 'faulty' start hook did not return within 0.5 s" in error["error"]
    expected = {
        "raise_probe": "plugin 'faulty' probe hook failed: "
                       "RuntimeError: boom in probe",
        "hang_probe": "plugin 'faulty' probe hook did not return "
                      "within 0.2 s",
        "garbage": "probe returned str, expected core.Probe or None",
    }
    for cid, text in expected.items():
        view = core.wait_state(cid, lambda v: v["health"] == "unhealthy", 10, "unhealthy")
        assert view["state"] == "running" and view["pid"] is not None
        assert view["error"] == text, view
    # The others keep their cadence while hung probes hold their worker threads.
    stamps: list[float] = []
    good_updates: set[str] = set()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        snap = core.status()
        stamp = datetime.fromisoformat(snap["metrics"]["timestamp"].replace("Z", "+00:00"))
        if not stamps or stamp.timestamp() != stamps[-1]:
            stamps.append(stamp.timestamp())
        good_updates.add(snap["components"]["good"]["last_updated"])
        time.sleep(0.02)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert len(stamps) >= 7 and max(gaps) < 2 * INTERVAL, gaps
    assert len(good_updates) >= 7
    good = core.comp("good")
    assert good["state"] == "running" and good["health"] == "healthy" and good["error"] is None
    for cid in ("raise_stop", "hang_stop"):
        pid = core.comp(cid)["pid"]
        began = time.monotonic()
        core.post(f"/api/components/{cid}/stop")
        core.wait_state(cid, lambda v: v["state"] == "stopped", 5, "stopped")
        assert time.monotonic() - began < 1.0 + 1.0
        assert not alive(pid)
    # A stop hook still hanging in its thread does not keep the component from
    # starting again (nor from stopping again, bounded as before).
    core.post("/api/components/hang_stop/start")
    view = core.wait_state("hang_stop", lambda v: v["state"] in ("running", "error"), 5,
                           "started again")
    assert view["state"] == "running" and view["error"] is None, view
    began = time.monotonic()
    core.post("/api/components/hang_stop/stop")
    core.wait_state("hang_stop", lambda v: v["state"] == "stopped", 5, "stopped again")
    assert time.monotonic() - began < 1.0 + 1.0
    notes = core.notes("raise_stop")
    assert any("stop hook failed: PluginError: plugin 'faulty' stop hook failed: "
               "RuntimeError: boom in stop" in n for n in notes), notes
    # Hung hook threads do not hold the exit up.
    core.signal(signal.SIGTERM)
    assert core.wait_exit(10) == 0
    assert core.leftovers() == []


def test_plugin_calling_sys_exit_or_returning_odd_probes(tmp_path: Path,
                                                        cores: list[Core]) -> None:
    """sys.exit() in a hook is that plugin's failure, not the supervisor's exit; odd
    Probe fields (non-string error, non-numeric metrics) are shown safely."""
    site = plugin_site(tmp_path)
    keys = {"exit_start": 'exit_in = "start"\nmax_failures = 1\n',
            "exit_probe": 'exit_in = "probe"\n',
            "exit_stop": 'exit_in = "stop"\nstop_timeout = 1.0\n',
            "odd_error": 'odd_probe = "error_not_str"\n',
            "odd_metrics": 'odd_probe = "metrics_not_numbers"\n',
            "odd_nomap": 'odd_probe = "metrics_not_mapping"\n'}
    body = "".join(f'[components.{cid}]\nplugin = "faulty"\n{k}\n' for cid, k in keys.items())
    body += tagged("good")
    core = start(cores, write_config(tmp_path, body, interval=INTERVAL), env=plugin_env(site))
    view = core.wait_state("exit_start", lambda v: v["state"] == "error", 10, "error")
    assert "start hook failed: SystemExit: exit in start" in view["error"], view
    view = core.wait_state("exit_probe", lambda v: v["health"] == "unhealthy", 10, "unhealthy")
    assert "probe hook failed: SystemExit: exit in probe" in view["error"], view
    view = core.wait_state("odd_error", lambda v: v["health"] == "unhealthy", 10, "unhealthy")
    assert view["error"] == "123"
    view = core.wait_state("odd_nomap", lambda v: v["error"] is not None, 10, "error")
    assert view["error"] == "probe returned metrics that are not a mapping of numbers"
    metrics = wait_for(lambda: (m := core.status()["metrics"])["storage_size_mb"] and m, 10,
                       "odd_metrics' storage figure")
    assert metrics["storage_size_mb"] == 2.5
    assert isinstance(metrics["total_concepts"], int | float)
    assert not isinstance(metrics["total_associations"], bool)
    for name in ("avg_latency_ms", "queries_per_second"):
        assert metrics[name] is None or math.isfinite(metrics[name]), metrics
    pid = core.comp("exit_stop")["pid"]
    core.post("/api/components/exit_stop/stop")
    core.wait_state("exit_stop", lambda v: v["state"] == "stopped", 5, "stopped")
    assert not alive(pid)
    assert any("SystemExit: exit in stop" in n for n in core.notes("exit_stop"))
    assert core.comp("good")["state"] == "running"
    core.signal(signal.SIGTERM)
    assert core.wait_exit(10) == 0
    assert core.leftovers() == []


def test_plugin_raising_in_validate_config_is_a_config_error(tmp_path: Path) -> None:
    """The config names the component and the plugin's failure; exit 2, no traceback."""
    import subprocess

    site = plugin_site(tmp_path)
    config = write_config(tmp_path, '[components.bad]\nplugin = "faulty"\n'
                                    'raise_in = "validate_config"\n')
    env = {"PATH": "/usr/bin:/bin", **plugin_env(site)}
    run = subprocess.run([PY, "-m", "core", "--config", str(config)], env=env,
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert "components.bad.plugin: plugin 'faulty' failed to validate its options: " \
           "RuntimeError: boom in validate_config" in run.stderr
    assert "Traceback" not in run.stderr


def test_plugin_calling_sys_exit_in_validate_config(tmp_path: Path,
                                                    cores: list[Core]) -> None:
    """At start-up: exit 2 with a message naming the hook, no traceback. On reload:
    rejected (400), the supervisor runs on."""
    import subprocess

    site = plugin_site(tmp_path)
    config = write_config(tmp_path, tagged("good"))
    good = config.read_text()
    config.write_text(good + '[components.bad]\nplugin = "faulty"\nexit_in = "validate_config"\n')
    env = {"PATH": "/usr/bin:/bin", **plugin_env(site)}
    run = subprocess.run([PY, "-m", "core", "--config", str(config)], env=env,
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2, run.stderr
    assert "validate_config hook called sys.exit('exit in validate_config')" in run.stderr
    assert "Traceback" not in run.stderr
    broken = config.read_text()
    config.write_text(good)
    core = start(cores, config, env=plugin_env(site))
    pids = core.running_pids()
    config.write_text(broken)
    assert core.client is not None
    resp = core.client.post("/api/reload")
    assert resp.status_code == 400 and "sys.exit" in resp.json()["error"], resp.text
    assert core.running_pids() == pids
    core.signal(signal.SIGTERM)
    assert core.wait_exit(10) == 0


# -- SIGHUP with a broken config --------------------------------------------------------

@pytest.mark.parametrize("broken", [
    "[components.c0\nplugin = ",                                    # TOML syntax
    '[components.c0]\nplugin = "process"\ncommand = ["x"]\nrestat = "always"\n',  # typo key
])
def test_sighup_with_broken_config_changes_nothing(tmp_path: Path, cores: list[Core],
                                                   broken: str) -> None:
    """Rejected and logged; the running set is unchanged (same pids); a good
    config on the next SIGHUP is applied."""
    body = tagged("c0") + tagged("c1")
    config = write_config(tmp_path, body)
    core = start(cores, config)
    pids = core.running_pids()
    good = config.read_text()
    config.write_text(good.replace(body, broken))
    core.signal(signal.SIGHUP)
    wait_for(lambda: "config reload rejected" in core.stderr(), 10, "the rejection")
    assert str(config) in core.stderr().split("config reload rejected", 1)[1]
    time.sleep(3 * 0.2)
    assert core.running_pids() == pids
    assert all(v["restarts"] == 0 for v in core.get("/api/components")["components"])
    config.write_text(good + tagged("c2"))
    core.signal(signal.SIGHUP)
    new = wait_for(lambda: len(core.status()["components"]) == 3 and core.running_pids(), 10,
                   "c2 added")
    assert {k: new[k] for k in pids} == pids
    core.signal(signal.SIGTERM)
    assert core.wait_exit(15) == 0


@pytest.mark.slow
def test_reload_with_a_hanging_validate_config_keeps_supervising(tmp_path: Path,
                                                                cores: list[Core]) -> None:
    """A plugin whose validate_config hangs, met by POST /api/reload and by SIGHUP: the
    snapshot keeps ticking, REST answers (400 once the load times out), SIGTERM during
    a hung SIGHUP reload still exits 0 at once."""
    site = plugin_site(tmp_path)
    config = write_config(tmp_path, tagged("c0"), interval=INTERVAL)
    core = start(cores, config, env=plugin_env(site))
    pids = core.running_pids()
    config.write_text(config.read_text() + '[components.stuck]\nplugin = "faulty"\n'
                                           'hang_in = "validate_config"\n')
    assert core.client is not None
    with httpx.Client(base_url=core.url, timeout=20) as slow, ThreadPoolExecutor(1) as pool:
        reload = pool.submit(slow.post, "/api/reload")
        stamps = set()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            resp = core.client.get("/api/status", timeout=1.0)
            stamps.add(resp.json()["metrics"]["timestamp"])
            time.sleep(0.05)
        assert len(stamps) >= 5  # ticks went on while the reload hangs
        answer = reload.result(30)
    assert answer.status_code == 400
    assert "validate_config" in answer.json()["error"]
    assert core.running_pids() == pids
    core.signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: reloading" in core.stderr(), 5, "the SIGHUP")
    began = time.monotonic()
    core.signal(signal.SIGTERM)
    assert core.wait_exit(10) == 0
    assert time.monotonic() - began < 3.0


@pytest.mark.slow
def test_plugin_hanging_in_validate_config_at_start_is_a_config_error(tmp_path: Path) -> None:
    """The start does not hang: exit 2 after the load timeout, a message, no traceback."""
    import subprocess

    from core.supervisor import CONFIG_LOAD_TIMEOUT

    site = plugin_site(tmp_path)
    config = write_config(tmp_path, '[components.stuck]\nplugin = "faulty"\n'
                                    'hang_in = "validate_config"\n')
    env = {"PATH": "/usr/bin:/bin", **plugin_env(site)}
    began = time.monotonic()
    run = subprocess.run([PY, "-m", "core", "--config", str(config)], env=env,
                         capture_output=True, text=True, timeout=CONFIG_LOAD_TIMEOUT + 20)
    assert run.returncode == 2, run.stderr
    assert time.monotonic() - began < CONFIG_LOAD_TIMEOUT + 5
    assert (f"{config}: reading the config did not finish within {CONFIG_LOAD_TIMEOUT:g} s"
            in run.stderr)
    assert "Traceback" not in run.stderr


def test_installed_plugin_that_fails_to_import_affects_only_its_components(
        tmp_path: Path) -> None:
    """A broken plugin package is reported with its entry point; a config that uses it
    is rejected (status 2, no traceback), one that does not still runs."""
    import subprocess

    site = plugin_site(tmp_path)
    init = site / "cc_faulty" / "__init__.py"
    init.write_text(init.read_text() + "\nthis is not python\n")
    env = {"PATH": "/usr/bin:/bin", **plugin_env(site)}
    uses = tmp_path / "uses.toml"
    uses.write_text('[components.f]\nplugin = "faulty"\n')
    run = subprocess.run([PY, "-m", "core", "check", str(uses)], env=env,
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2, run.stderr
    assert "components.f.plugin: plugin 'faulty' is installed but" in run.stderr
    assert "cc_faulty" in run.stderr and "Traceback" not in run.stderr
    config = write_config(tmp_path, tagged("good"))
    run = subprocess.run([PY, "-m", "core", "check", str(config)], env=env,
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert "cc_faulty" in run.stderr and "Traceback" not in run.stderr


def test_mixed_control_storm_with_reloads_settles(tmp_path: Path, cores: list[Core]) -> None:
    """Concurrent start/stop/restart calls mixed with reloads that change a component:
    no call hangs, never two processes for one component; once the storm ends a final
    start of each leaves exactly the processes the component views show."""
    # m2 and m3 depend on m0 and m1: starts wait for them, shutdown orders waves.
    body = "".join(tagged(f"m{i}", stop_timeout=2.0) for i in range(2))
    body += "".join(tagged(f"m{i}", stop_timeout=2.0, depends_on=["m0", "m1"])
                    for i in range(2, 4))
    config = write_config(tmp_path, body, interval=0.1)
    variants = [config.read_text(), config.read_text().replace(
        'env = { FAULT_COMP = "m0" }', 'env = { FAULT_COMP = "m0", V = "2" }')]
    assert variants[0] != variants[1]
    core = start(cores, config)
    core.running_pids()
    changed: list[str] = []

    def control(n: int) -> list[int]:
        rng = random.Random(n)
        codes = []
        with httpx.Client(base_url=core.url, timeout=20) as client:
            for i in range(12):
                if n == 0:
                    config.write_text(variants[(i + 1) % 2])
                    resp = client.post("/api/reload")
                    codes.append(resp.status_code)
                    changed.extend(resp.json().get("changed", []))
                else:
                    action = rng.choice(["start", "stop", "restart"])
                    url = f"/api/components/m{rng.randrange(4)}/{action}"
                    try:
                        codes.append(client.post(url, timeout=8).status_code)
                    except httpx.ReadTimeout:
                        cid = url.split("/")[3]
                        lines = core.get(f"/api/components/{cid}/logs?lines=40")["lines"]
                        raise AssertionError(f"{url} hung; {cid}'s log:\n" + "\n".join(
                            f"{x['time']} {x['text']}" for x in lines)) from None
        return codes

    with watch_for_doubles(core.pid) as doubles:
        with ThreadPoolExecutor(6) as pool:
            codes = [c for batch in pool.map(control, range(6)) for c in batch]
    assert set(codes) == {200}, codes
    assert doubles == []
    assert changed == ["m0"] * 12
    assert sum(len(v) for v in started_pids(core).values()) > 10  # it was a storm
    for i in range(4):
        core.post(f"/api/components/m{i}/start")

    def live() -> dict[str, int] | None:
        # The components' own views (the snapshot may be an interval old).
        views = core.get("/api/components")["components"]
        if all(v["state"] == "running" for v in views):
            return {v["id"]: v["pid"] for v in views}
        return None

    pids = wait_for(live, 10, "every component running")
    time.sleep(0.3)
    assert live() == pids
    groups = by_env(psutil.Process(core.pid).children(), "FAULT_COMP")
    assert groups == {cid: [pid] for cid, pid in pids.items()}
    core.signal(signal.SIGTERM)
    assert core.wait_exit(15) == 0
    assert core.leftovers() == []


def test_frozen_supervisor_catches_up_after_sigcont(tmp_path: Path, cores: list[Core]) -> None:
    """SIGSTOP of the supervisor for several intervals while children are killed: after
    SIGCONT they are restarted once each, ticks resume at their cadence (no burst)."""
    body = "".join(tagged(f"f{i}", stable_after=0.0) for i in range(3))
    core = start(cores, write_config(tmp_path, body, interval=INTERVAL))
    pids = core.running_pids()
    core.signal(signal.SIGSTOP)
    try:
        for pid in pids.values():
            psutil.Process(pid).kill()
        time.sleep(5 * INTERVAL)
    finally:
        core.signal(signal.SIGCONT)
    new = wait_for(lambda: (p := core.running_pids()) and not set(p.values()) & set(
        pids.values()) and p, 10, "the restarts")
    views = core.get("/api/components")["components"]
    assert [v["restarts"] for v in views] == [1, 1, 1]
    assert by_env(psutil.Process(core.pid).children(), "FAULT_COMP") == {
        cid: [pid] for cid, pid in new.items()}
    time.sleep(3 * INTERVAL)
    history = core.get("/api/history?seconds=10")["points"]
    stamps = [datetime.fromisoformat(p["timestamp"].replace("Z", "+00:00")).timestamp()
              for p in history]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    frozen = gaps.index(max(gaps))
    assert gaps[frozen] > 4 * INTERVAL
    after = gaps[frozen + 1:]
    assert len(after) >= 3 and min(after) > INTERVAL / 2, gaps  # no burst to catch up
    core.signal(signal.SIGTERM)
    assert core.wait_exit(15) == 0
