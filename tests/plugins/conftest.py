"""Fixtures for the reference stack: real engine and API processes on loopback."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 5.0) -> tuple[int, Any]:
    """One JSON request on a fresh connection: (status, decoded body)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        payload = resp.read()
        assert resp.getheader("Content-Type") == "application/json", payload
        return resp.status, json.loads(payload)
    finally:
        conn.close()


@dataclass
class Service:
    """One child process we started, with the address it announced."""

    proc: subprocess.Popen[str]
    url: str
    port: int
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(5)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Services:
    """Starts engines and API servers; kills whatever is left at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Service] = []

    def spawn(self, argv: list[str], name: str, timeout: float = 10.0) -> Service:
        log = self.tmp_path / f"{name}-{len(self.started)}.log"
        out = log.open("w")
        proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, text=True)
        out.close()
        service = Service(proc, "", 0, log)
        self.started.append(service)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            first = log.read_text().partition("\n")
            if first[1] and "listening on http://" in first[0]:
                service.url = first[0].split("listening on ")[1].split()[0]
                service.port = int(service.url.rsplit(":", 1)[1])
                return service
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}: {log.read_text()}")
            time.sleep(0.02)
        raise AssertionError(f"{name} did not announce its address: {log.read_text()}")

    def engine(self, data_dir: Path, port: int = 0, *extra: str) -> Service:
        return self.spawn(["-m", "plugins.storage.engine", "--data-dir", str(data_dir),
                           "--port", str(port), *extra], "engine")

    def api(self, storage_url: str, port: int = 0, *extra: str) -> Service:
        return self.spawn(["-m", "plugins.api.server", "--storage-url", storage_url,
                           "--port", str(port), *extra], "api")

    def close(self) -> None:
        for service in self.started:
            if service.proc.poll() is None:
                os.kill(service.proc.pid, signal.SIGKILL)
                service.proc.wait(5)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    found = Services(tmp_path)
    try:
        yield found
    finally:
        found.close()


@pytest.fixture
def engine(services: Services, tmp_path: Path) -> Service:
    return services.engine(tmp_path / "data")


@pytest.fixture
def api(services: Services, engine: Service) -> Service:
    return services.api(engine.url)


@pytest.fixture
def json_call() -> Callable[..., tuple[int, Any]]:
    return call


@pytest.fixture
def port_factory() -> Callable[[], int]:
    return free_port
