"""A real server for the web tests: real Supervisor, real children, port 0."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from core.config import Config, load
from core.hub import Hub
from core.plugins import PluginManager
from core.supervisor import Supervisor
from core.web import serve

#: A child that just lives until it is stopped.
SLEEPER = f'["{sys.executable}", "-c", "import time; time.sleep(600)"]'


def sleeper(cid: str, **extra: object) -> str:
    """A `[components.<cid>]` table running a sleeping Python child."""
    lines = [f"[components.{cid}]", 'plugin = "process"', f"command = {SLEEPER}"]
    lines += [f"{k} = {v!r}".replace("'", '"').replace("True", "true").replace(
        "False", "false") for k, v in extra.items()]
    return "\n".join(lines) + "\n"


@dataclass
class Server:
    port: int
    config: Config
    hub: Hub
    supervisor: Supervisor
    shutdown: trio.Event
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.scheme == 'https' else 'ws'}://127.0.0.1:{self.port}/ws"


@asynccontextmanager
async def web_server(tmp_path: Path, components: str = "", *, interval: float = 0.25,
                     server: str = "", tick: bool = True, port: int = 0
                     ) -> AsyncIterator[Server]:
    """Supervisor + web server on 127.0.0.1:<free port>; everything stopped on exit."""
    path = tmp_path / "config.toml"
    path.write_text(f"[server]\nport = {port}\ninterval = {interval}\n{server}\n{components}")
    plugins = PluginManager(load_entry_points=False)
    config = load(path, plugins=plugins.names, validate=plugins.validate)
    hub = Hub(interval=config.server.interval, history_seconds=config.server.history_seconds)
    sup = Supervisor(config, plugins, hub if tick else None)
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve, sup, hub, config.server, shutdown=shutdown))
        await nursery.start(sup.run)
        srv = Server(port, config, hub, sup, shutdown,
                     scheme="https" if config.server.tls_cert else "http")
        try:
            yield srv
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(15):
                await sup.shutdown()
                shutdown.set()
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def ws_client(url: str, **kwargs: object) -> AsyncIterator[WebSocketConnection]:
    """open_websocket_url that also closes its socket when the server closed first.

    trio-websocket 0.12 leaves the TCP socket open (a ResourceWarning, an
    error under -W error) when the server starts the closing handshake.
    """
    async with open_websocket_url(url, **kwargs) as ws:  # type: ignore[arg-type]
        try:
            yield ws
        finally:
            await close_transport(ws)


async def close_transport(ws: WebSocketConnection) -> None:
    stream = getattr(ws, "_stream", None)
    if stream is not None and ws.closed is not None:
        with trio.CancelScope(shield=True):
            await stream.aclose()
