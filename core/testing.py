"""Test utilities for plugin authors: a real `python -m core` around your plugin.

    from core.testing import RunningCore, free_port

    def test_my_plugin(tmp_path):
        port = free_port()
        with RunningCore(tmp_path, f'''
            [components.echo]
            plugin = "echo"
            port = {port}
        ''') as core:
            view = core.wait_for("echo", lambda c: c["health"] == "healthy")
            assert view["metrics"]["lines_served"] == 0
            assert core.stop("echo")["state"] == "stopped"

`RunningCore` writes config.toml in a directory of the test's, starts the
supervisor as a child process on a free loopback port (so the plugin is
found by its entry point, exactly as in production), and stops it with
SIGTERM on exit, checking that it exits 0. Nothing is faked: the plugin's
hooks run in the real supervisor and its process is really spawned,
probed and stopped. Standard library only; no async test plugin needed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

__all__ = ["CoreError", "RunningCore", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CoreError(AssertionError):
    """The supervisor did not start, answered an error, or a wait timed out.

    The message ends with the supervisor's own output, to show why.
    """


class RunningCore:
    """`python -m core` on a free port with `components` as config.toml's component tables.

    :param directory: where config.toml, data/ and logs/ go (pytest's tmp_path).
    :param components: the ``[components.<id>]`` tables (TOML; indentation is
        removed, so a triple-quoted f-string reads well).
    :param interval: seconds between snapshots (short, so that tests are quick).
    :param server: extra ``[server]`` keys, as TOML lines.
    """

    def __init__(self, directory: str | Path, components: str, *, interval: float = 0.2,
                 server: str = "", start_timeout: float = 30.0) -> None:
        self.directory = Path(directory)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start_timeout = start_timeout
        self.config = self.directory / "config.toml"
        self.output = self.directory / "core-output.txt"
        self.config.write_text(
            f'[server]\nhost = "127.0.0.1"\nport = {self.port}\ninterval = {interval}\n'
            f"{textwrap.dedent(server)}\n\n{textwrap.dedent(components)}", encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None

    # -- lifetime ---------------------------------------------------------------

    def __enter__(self) -> RunningCore:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        code = self.close()
        if kind is None and code != 0:
            raise CoreError(self._why(f"python -m core exited with {code} after SIGTERM"))

    def start(self) -> None:
        """Start the supervisor and wait until it answers; CoreError if it does not."""
        env = {k: v for k, v in os.environ.items() if k != "CONTROL_CENTER_TOKEN"}
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "core", "--config", str(self.config)],
                cwd=self.directory, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise CoreError(self._why(f"python -m core exited with {code} at start"))
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise CoreError(self._why(f"python -m core did not answer within "
                                  f"{self.start_timeout:g} s"))

    def close(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then wait (SIGKILL past `timeout`); the exit status."""
        proc, self.proc = self.proc, None
        if proc is None:
            return self.exit_code
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.exit_code = proc.returncode
        return self.exit_code

    # -- REST -------------------------------------------------------------------

    def request(self, method: str, path: str) -> Any:
        """One REST call; the decoded JSON answer, CoreError on an error status."""
        req = urllib.request.Request(f"{self.url}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            raise CoreError(self._why(f"{method} {path} answered {exc.code}: {body}")) from None

    def status(self) -> dict[str, Any]:
        """The latest snapshot document (GET /api/status)."""
        return self.request("GET", "/api/status")

    def component(self, cid: str) -> dict[str, Any]:
        """One component as in the snapshot, plus its id."""
        return self.request("GET", f"/api/components/{quote(cid, safe='')}")

    def start_component(self, cid: str) -> dict[str, Any]:
        return self.request("POST", f"/api/components/{quote(cid, safe='')}/start")["component"]

    def stop(self, cid: str) -> dict[str, Any]:
        """Stop a component and wait until it is stopped (``?wait=true``)."""
        return self.request("POST", f"/api/components/{quote(cid, safe='')}/stop?wait=true"
                            )["component"]

    def logs(self, cid: str, lines: int = 500) -> list[str]:
        """The component's recent log lines (its output and the supervisor's notes)."""
        answer = self.request("GET", f"/api/components/{quote(cid, safe='')}/logs?lines={lines}")
        return [line["text"] for line in answer["lines"]]

    def metrics_text(self) -> str:
        """GET /metrics, the Prometheus text."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as resp:
            return resp.read().decode()

    def wait_for(self, cid: str, predicate: Callable[[dict[str, Any]], bool], *,
                 timeout: float = 20.0) -> dict[str, Any]:
        """Poll the component until `predicate(view)` is true; the view. CoreError on timeout."""
        deadline = time.monotonic() + timeout
        view = self.component(cid)
        while not predicate(view):
            if time.monotonic() > deadline:
                raise CoreError(self._why(f"{cid} never got there in {timeout:g} s; last "
                                          f"seen: {json.dumps(view)}"))
            time.sleep(0.05)
            view = self.component(cid)
        return view

    def wait_until(self, condition: Callable[[], bool], what: str = "the condition", *,
                   timeout: float = 20.0) -> None:
        """Poll `condition()` until it is true; CoreError naming `what` on timeout.

        For what lags the live view by up to one interval: the snapshot
        (`status()`) and `/metrics` are refreshed once per tick.
        """
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise CoreError(self._why(f"{what} did not happen in {timeout:g} s"))
            time.sleep(0.05)

    def _why(self, message: str) -> str:
        try:
            tail = self.output.read_text(errors="replace")[-3000:]
        except OSError:
            tail = ""
        return f"{message}\n--- python -m core output ---\n{tail}"
