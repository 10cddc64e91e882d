"""Real-browser fixtures: Debian's chromium via Playwright, and a real `python -m core`.

Every test module gets one browser (module scope) and starts its own
supervisor subprocess on a free port with a short interval. The sync
Playwright API is used from plain (non-async) tests so its event loop never
meets trio's.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Messages Chromium itself logs for failed network requests. They are not
# JavaScript errors; tests that provoke them on purpose (a 401, a refused
# reconnection) allow them explicitly.
NETWORK_NOISE = ("Failed to load resource", "WebSocket connection to")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def toml_str(value: str) -> str:
    """A TOML basic string (JSON's escapes are valid TOML)."""
    return json.dumps(value)


def process_component(cid: str, name: str, code: str, **keys: Any) -> str:
    """A [components.<cid>] table running `{python} -c code` through the process plugin."""
    lines = [f"[components.{cid}]", 'plugin = "process"', f"name = {toml_str(name)}",
             f"command = {json.dumps(['{python}', '-c', code])}"]
    for key, value in keys.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


class CoreServer:
    """`python -m core --config <tmp>/config.toml` as a real subprocess."""

    def __init__(self, tmp: Path, components: str, *, interval: float = 0.3,
                 port: int | None = None, server_extra: str = "",
                 config_text: str | None = None) -> None:
        """Write tmp/config.toml: [server] + components, or config_text as given."""
        self.tmp = tmp
        self.port = port or free_port()
        self.interval = interval
        self.config = tmp / "config.toml"
        self.config.write_text(config_text if config_text is not None else (
            "[server]\n"
            'host = "127.0.0.1"\n'
            f"port = {self.port}\n"
            f"interval = {interval}\n"
            f"data_dir = {toml_str(str(tmp / 'data'))}\n"
            f"log_dir = {toml_str(str(tmp / 'logs'))}\n"
            f"{server_extra}\n\n{components}"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = tmp / "core-output.txt"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        assert self.proc is None, "already running"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "core", "--config", str(self.config)],
                cwd=self.tmp, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"python -m core exited with {self.proc.returncode}:\n"
                                     f"{self.output.read_text(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"python -m core did not answer /healthz within {timeout}s")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait (SIGKILL past the timeout); returns the exit status."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
                raise AssertionError("python -m core ignored SIGTERM") from None
        return proc.returncode

    def get(self, path: str, token: str | None = None) -> Any:
        request = urllib.request.Request(f"{self.url}{path}")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=5) as resp:
            return json.loads(resp.read())


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need Debian's chromium "
                    "(apt-get install chromium); they never download a browser.")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


class PageErrors:
    """Console errors and uncaught exceptions seen by one page."""

    def __init__(self) -> None:
        self.console: list[str] = []
        self.exceptions: list[str] = []

    def attach(self, page: Any) -> None:
        page.on("console", lambda msg: self.console.append(msg.text)
                if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.exceptions.append(str(exc)))

    def check(self, *, allow_network: bool = False) -> None:
        console = [m for m in self.console
                   if not (allow_network and m.startswith(NETWORK_NOISE))]
        assert not self.exceptions, f"uncaught JavaScript errors: {self.exceptions}"
        assert not console, f"console errors: {console}"


@pytest.fixture
def new_page(browser: Any) -> Iterator[Callable[..., tuple[Any, PageErrors]]]:
    """Factory: a fresh context + page whose errors are collected."""
    contexts: list[Any] = []

    def make(**context_options: Any) -> tuple[Any, PageErrors]:
        context = browser.new_context(**context_options)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(10_000)
        errors = PageErrors()
        errors.attach(page)
        return page, errors

    yield make
    for context in contexts:
        context.close()


def watch_attribute(page: Any, selector: str, attribute: str, name: str) -> None:
    """Record every value `attribute` of `selector` takes into window[name] (in order)."""
    page.evaluate(
        """([selector, attribute, name]) => {
            const node = document.querySelector(selector);
            window[name] = [node.getAttribute(attribute)];
            new MutationObserver(() => {
                const value = node.getAttribute(attribute);
                const seen = window[name];
                if (seen[seen.length - 1] !== value) seen.push(value);
            }).observe(node, {attributes: true, attributeFilter: [attribute]});
        }""", [selector, attribute, name])


def save_artifact(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


# Fixtures hand the helpers to test modules (importlib import mode cannot
# import this conftest by name).
@pytest.fixture(scope="session")
def helpers() -> Any:
    class Helpers:
        CoreServer = CoreServer
        process_component = staticmethod(process_component)
        watch_attribute = staticmethod(watch_attribute)
        save_artifact = staticmethod(save_artifact)
        free_port = staticmethod(free_port)
        toml_str = staticmethod(toml_str)
        repo = REPO

    return Helpers
