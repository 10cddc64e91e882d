"""`python -m core` as an operator runs it: start-up, signals, exit status."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from .conftest import alive, sleeper

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_core(tmp_path: Path, body: str, port: int) -> subprocess.Popen[str]:
    config = tmp_path / "config.toml"
    config.write_text(f"[server]\nport = {port}\ninterval = 0.2\n\n{body}")
    return subprocess.Popen([sys.executable, "-m", "core", "--config", str(config)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def wait_status(port: int, pred, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = get_json(f"http://127.0.0.1:{port}/api/status")
            if pred(last):
                return last
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout} s; last: {last}")


@pytest.fixture
def core_proc():
    """Starts python -m core like start_core; whatever it started is ended at teardown."""
    procs: list[subprocess.Popen[str]] = []

    def start(tmp_path: Path, body: str, port: int) -> subprocess.Popen[str]:
        procs.append(start_core(tmp_path, body, port))
        return procs[-1]

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        if p.stdout is not None and not p.stdout.closed:
            p.communicate(timeout=10)


BODY = (f'[components.a]\nplugin = "process"\ncommand = {sleeper()}\n'
        f'[components.b]\nplugin = "process"\ncommand = {sleeper()}\ndepends_on = ["a"]\n')


def test_sigterm_stops_everything_and_exits_0(tmp_path: Path, core_proc) -> None:
    port = free_port()
    proc = core_proc(tmp_path, BODY, port)
    doc = wait_status(port, lambda d: all(c["state"] == "running"
                                          for c in d["components"].values()))
    pids = [c["pid"] for c in doc["components"].values()]
    assert all(alive(p) for p in pids)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"Control Center dashboard: http://127.0.0.1:{port}/" in out
    assert not any(alive(p) for p in pids)
    # reverse dependency order: b stopped before a began stopping
    assert err.index("b: stopping -> stopped") < err.index("a: running -> stopping")
    assert "Traceback" not in err


def test_sigint_exits_0(tmp_path: Path, core_proc) -> None:
    port = free_port()
    proc = core_proc(tmp_path, BODY, port)
    wait_status(port, lambda d: d["components"]["b"]["state"] == "running")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=20)
    assert proc.returncode == 0


def test_sighup_reloads(tmp_path: Path, core_proc) -> None:
    port = free_port()
    proc = core_proc(tmp_path, BODY, port)
    doc = wait_status(port, lambda d: d["components"]["b"]["state"] == "running")
    pid_a = doc["components"]["a"]["pid"]
    config = tmp_path / "config.toml"
    config.write_text(config.read_text().replace('depends_on = ["a"]\n', "") +
                      f'[components.c]\nplugin = "process"\ncommand = {sleeper()}\n')
    proc.send_signal(signal.SIGHUP)
    doc = wait_status(port, lambda d: d["components"].get("c", {}).get("state") == "running")
    assert doc["components"]["a"]["pid"] == pid_a
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=20)
    assert proc.returncode == 0


def test_port_taken_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        marker = tmp_path / "ran"
        proc = start_core(tmp_path, f'[components.a]\nplugin = "process"\n'
                                    f'command = ["touch", "{marker}"]\n', port)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "server.port" in err and str(port) in err
    assert "Traceback" not in err
    assert not marker.exists()


def test_sigkill_of_supervisor_takes_children_and_next_start_is_clean(
        tmp_path: Path, core_proc) -> None:
    port = free_port()
    proc = core_proc(tmp_path, BODY, port)
    doc = wait_status(port, lambda d: all(c["state"] == "running"
                                          for c in d["components"].values()))
    pids = [c["pid"] for c in doc["components"].values()]
    proc.kill()
    proc.communicate(timeout=5)
    deadline = time.monotonic() + 2
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(alive(p) for p in pids)
    proc2 = core_proc(tmp_path, BODY, port)
    wait_status(port, lambda d: all(c["state"] == "running" for c in d["components"].values()))
    proc2.send_signal(signal.SIGTERM)
    proc2.communicate(timeout=20)
    assert proc2.returncode == 0


def test_second_supervisor_on_same_data_dir_is_refused(tmp_path: Path, core_proc) -> None:
    port = free_port()
    proc = core_proc(tmp_path, BODY, port)
    wait_status(port, lambda d: d["components"]["a"]["state"] == "running")
    second = subprocess.run([sys.executable, "-m", "core", "--config",
                             str(tmp_path / "config.toml")], cwd=ROOT, capture_output=True,
                            text=True, timeout=30)
    assert second.returncode == 2
    assert str(proc.pid) in second.stderr
    assert psutil.Process(proc.pid).is_running()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=20)
