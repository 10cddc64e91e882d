"""Fixtures for the federation suite: real `python -m core` processes on 127.0.0.1.

Each test starts its own Control Centers (children with components, a
parent following them through `[remotes.NAME]` tables) and watches the
parent's `/ws` as a dashboard would.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.faults.conftest import (
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
