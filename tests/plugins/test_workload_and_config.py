"""The workload generator and the shipped config.toml."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from core.config import load
from core.plugins import PluginManager
from plugins.api.workload import run

ROOT = Path(__file__).resolve().parents[2]


def test_workload_learns_and_queries_through_the_api(api, json_call):
    counts = run(api.url, rate=200.0, count=60, duration=10.0, stop=threading.Event(), seed=7)
    assert counts["failed"] == 0
    assert counts["learned"] > 20 and counts["queried"] > 5
    assert sum(counts.values()) == 60
    stats = json_call(api.url, "GET", "/stats")[1]
    assert stats["requests_served"] == 60
    assert stats["errors"] == 0


def test_workload_keeps_trying_while_the_api_is_down(port_factory):
    stop = threading.Event()
    started = time.monotonic()
    counts = run(f"http://127.0.0.1:{port_factory()}", rate=50.0, count=10, duration=5.0,
                 stop=stop)
    assert counts["failed"] == 10
    assert time.monotonic() - started < 3  # paced, not stuck


def test_workload_process_exits_0_on_sigterm(port_factory):
    proc = subprocess.Popen([sys.executable, "-m", "plugins.api.workload", "--url",
                             f"http://127.0.0.1:{port_factory()}", "--rate", "5"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        assert "requests/s against" in proc.stdout.readline()
        assert "unreachable" in proc.stdout.readline()
        proc.terminate()
        out, _ = proc.communicate(timeout=5)
        assert proc.returncode == 0
        assert "done" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()


def test_shipped_config_is_valid_and_consistent():
    pm = PluginManager(load_entry_points=False)
    config = load(ROOT / "config.toml", plugins=pm.names, validate=pm.validate)
    assert (config.server.host, config.server.port, config.server.interval) == (
        "127.0.0.1", 9000, 2.0)
    assert config.server.data_dir == ROOT / "data"
    assert list(config.components) == ["storage", "api", "workload"]
    storage, api, workload = (config.components[c] for c in config.components)
    assert (storage.name, api.name) == ("Storage Engine", "Sutra API")
    assert api.depends_on == ("storage",) and workload.depends_on == ("api",)
    # The API points at the engine, the workload at the API.
    assert api.options["storage_url"] == (
        f"http://{storage.options['host']}:{storage.options['port']}")
    command = workload.options["command"]
    assert command[0] == "{python}"
    assert f"http://{api.options['host']}:{api.options['port']}" in command


def test_python_m_core_check_accepts_the_shipped_config():
    done = subprocess.run([sys.executable, "-m", "core", "check", "config.toml"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "OK (3 components" in done.stdout
