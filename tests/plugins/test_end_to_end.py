"""The shipped config, run by the real supervisor: figures move, control works,
and a storage engine killed with SIGKILL comes back with nothing acknowledged lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, port: int, storage: int, api: int) -> Path:
    """The shipped config.toml with free ports, a shorter tick and paths under tmp_path."""
    text = (ROOT / "config.toml").read_text()
    for old, new in [
        ("port = 9000", f"port = {port}"),
        ("interval = 2.0", "interval = 0.5"),
        ('data_dir = "data"', f'data_dir = "{tmp_path / "data"}"'),
        ('log_dir = "logs"', f'log_dir = "{tmp_path / "logs"}"'),
        ("7701", str(storage)),
        ("7702", str(api)),
        ('"--rate", "4"', '"--rate", "10"'),
    ]:
        assert old in text, f"the shipped config.toml no longer holds {old!r}"
        text = text.replace(old, new)
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


class NotYet(Exception):
    """The supervisor has no snapshot yet (503 while it starts)."""


def _until(what: str, check: Callable[[], Any], within: float = 20.0) -> Any:
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, KeyError, NotYet):
            last = None
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"not within {within} s: {what} (last: {last!r})")


def test_shipped_stack_under_the_supervisor(tmp_path, port_factory, json_call):
    port, storage_port, api_port = port_factory(), port_factory(), port_factory()
    config = _config(tmp_path, port, storage_port, api_port)
    core = f"http://127.0.0.1:{port}"
    api = f"http://127.0.0.1:{api_port}"
    log = (tmp_path / "core.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "core", "--config", str(config)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()

    def status() -> dict[str, Any]:
        code, body = json_call(core, "GET", "/api/status", timeout=2)
        if code == 503:
            raise NotYet(body)
        assert code == 200, body
        return body

    def component(cid: str) -> dict[str, Any]:
        return status()["components"][cid]

    def control(cid: str, action: str) -> dict[str, Any]:
        code, body = json_call(core, "POST", f"/api/components/{cid}/{action}")
        assert code == 200 and body["success"], body
        return body["component"]

    try:
        # Everything runs, and the workload makes the figures move.
        first = _until("storage, api and workload running with live figures", lambda: (
            (s := status())
            and all(s["components"][c]["state"] == "running"
                    for c in ("storage", "api", "workload"))
            and s["metrics"]["total_concepts"] > 0
            and s["metrics"]["queries_per_second"] > 0
            and s["metrics"]["avg_latency_ms"] > 0 and s))
        assert first["metrics"]["storage_size_mb"] > 0
        _until("total_concepts rising", lambda: status()["metrics"]["total_concepts"]
               > first["metrics"]["total_concepts"])

        # Stop and start the workload and the API through REST.
        for cid in ("workload", "api"):
            control(cid, "stop")
            _until(f"{cid} stopped", lambda c=cid: component(c)["state"] == "stopped")
            assert component(cid)["pid"] is None
            control(cid, "start")
            _until(f"{cid} healthy again", lambda c=cid: (
                component(c)["state"] == "running" and component(c)["health"] == "healthy"))

        # Stop storage: the API stays up, says why it is unhealthy, recovers by itself.
        control("storage", "stop")
        _until("storage stopped", lambda: component("storage")["state"] == "stopped")
        code, body = json_call(api, "POST", "/learn", {"content": "while storage is away"})
        assert code == 503 and "storage engine unavailable" in body["error"]
        _until("api reports its storage down", lambda: "storage engine unavailable"
               in (component("api")["error"] or ""))
        control("storage", "start")
        _until("api healthy with storage back", lambda: (
            (a := component("api"))["health"] == "healthy" and a["error"] is None))

        # kill -9 the engine in the middle of our writes: it is restarted and
        # every concept it acknowledged is still there.
        acked = []
        for i in range(30):
            code, body = json_call(api, "POST", "/learn", {"content": f"durable fact {i}"})
            assert code == 201, body
            acked.append(body["concept"]["id"])
        before = component("storage")
        os.kill(before["pid"], signal.SIGKILL)
        after = _until("storage restarted with a new pid", lambda: (
            (c := component("storage"))["state"] == "running"
            and c["pid"] not in (None, before["pid"]) and c["health"] == "healthy" and c))
        assert after["restarts"] >= before["restarts"] + 1
        for cid in acked:
            code, body = json_call(api, "GET", f"/concepts/{cid}")
            assert code == 200, (cid, body)
        _until("figures moving again", lambda: status()["metrics"]["total_concepts"]
               >= first["metrics"]["total_concepts"] + len(acked))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            code = None
    assert code == 0, (tmp_path / "core.log").read_text()[-3000:]
    text = (tmp_path / "logs" / "storage.log").read_text()
    assert "WAL checkpointed" in text
