"""Fixtures for the federation suite: real `python -m core` processes on 127.0.0.1.

Each test starts its own Control Centers (children with components, a
parent following them through `[remotes.NAME]` tables) and watches the
parent's `/ws` as a dashboard would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.faults.conftest import (
    ROOT,
    CoreServer,
    component_table,
    start_core,
    toml_value,
    ws_client,
)

__all__ = ["CoreServer", "Fleet", "component_table", "next_doc", "remote_table", "watch"]

#: The snapshot interval of every Control Center in this suite.
INTERVAL = 0.5


def remote_table(name: str, url: str, **keys: object) -> str:
    """A `[remotes.<name>]` table."""
    lines = [f"[remotes.{name}]", f"url = {toml_value(url)}"]
    lines += [f"{k} = {toml_value(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


class Fleet:
    """Starts Control Centers for one test and stops every one at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[CoreServer] = []

    def start(self, name: str, components: str = "", **server: object) -> CoreServer:
        server.setdefault("interval", INTERVAL)
        srv = start_core(self.tmp_path, components or component_table("a"), name=name,
                         **server)  # type: ignore[arg-type]
        self.started.append(srv)
        return srv

    def start_tls(self, name: str, components: str, ca_file: Path, **server: object
                  ) -> CoreServer:
        """`start` for a server with tls_cert and tls_key: its health checked over TLS."""
        base = self.tmp_path / name
        base.mkdir(parents=True, exist_ok=True)
        settings: dict[str, object] = {"host": "127.0.0.1", "port": 0, "interval": INTERVAL,
                                       "data_dir": str(base / "data"),
                                       "log_dir": str(base / "logs"), **server}
        config = base / "config.toml"
        config.write_text("[server]\n" + "".join(f"{k} = {toml_value(v)}\n"
                                                 for k, v in settings.items())
                          + "\n" + components)
        output = base / "output.txt"
        with output.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "core", "--config", str(config)],
                                    cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        token = settings.get("token")
        srv = CoreServer(proc, 0, config, output, base / "data", base / "logs",
                         token=token if isinstance(token, str) else None)
        self.started.append(srv)
        context = ssl.create_default_context(cafile=str(ca_file))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = re.search(r"dashboard: https://127\.0\.0\.1:(\d+)/", srv.output())
            if found:
                srv.port = int(found.group(1))
                try:
                    with urllib.request.urlopen(f"https://127.0.0.1:{srv.port}/healthz",
                                                context=context, timeout=2) as answer:
                        if answer.status == 200:
                            return srv
                except OSError:
                    pass
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"the TLS server did not come up:\n{srv.output()}")

    def signal(self, srv: CoreServer, signum: int) -> None:
        os.kill(srv.proc.pid, signum)

    def close(self) -> None:
        for srv in self.started:
            if srv.proc.poll() is None:
                os.kill(srv.proc.pid, signal.SIGCONT)  # a stopped one cannot take SIGTERM
            srv.stop()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    servers = Fleet(tmp_path)
    try:
        yield servers
    finally:
        servers.close()


async def next_doc(ws: Any) -> dict[str, Any]:
    return json.loads(await ws.get_message())


async def watch(srv: CoreServer, until: Callable[[dict[str, Any]], bool], *,
                timeout: float = 30.0) -> dict[str, Any]:
    """The first snapshot on `srv`'s /ws for which `until` holds (bounded in time)."""
    headers = [(b"authorization", f"Bearer {srv.token}".encode())] if srv.token else []
    last: dict[str, Any] | None = None
    try:
        with trio.fail_after(timeout):
            async with ws_client(srv.ws_url, extra_headers=headers) as ws:
                while True:
                    last = await next_doc(ws)
                    if until(last):
                        return last
    except trio.TooSlowError:
        raise AssertionError(f"no snapshot matched within {timeout} s; the last one:\n"
                             f"{json.dumps(last, indent=1)[:4000]}\n{srv.output()[-3000:]}"
                             ) from None
