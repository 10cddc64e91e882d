"""Port 9000: the dashboard page, REST, Prometheus metrics and `/ws`.

    await nursery.start(serve, supervisor, hub, server, shutdown=event)  # -> bound port

Shutdown order: every WebSocket gets close 1001 from us (hypercorn alone
would drop them, 1006 for the clients), then hypercorn finishes the HTTP
requests in flight and the listening socket closes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
from hypercorn.config import Config as HyperConfig

from core.config import ServerConfig
from core.hub import Hub
from core.web._hypercorn import Connections, bind, serve_asgi
from core.web.app import build_app
from core.web.ws import GOING_AWAY, Fanout

__all__ = ["serve"]

#: Listen backlog: hypercorn's 100 drops connections in a reconnect storm.
BACKLOG = 2048


def hypercorn_config(server: ServerConfig) -> HyperConfig:
    config = HyperConfig()
    config.backlog = BACKLOG
    # hypercorn closes with 1009 itself when a client message exceeds this.
    config.websocket_max_message_size = server.max_message_bytes
    config.graceful_timeout = 2.0
    config.accesslog = None
    if server.tls_cert is not None and server.tls_key is not None:
        config.certfile = str(server.tls_cert)
        config.keyfile = str(server.tls_key)
    return config


async def serve(supervisor: Any, hub: Hub, server: ServerConfig, *, shutdown: trio.Event,
                after_fanout: Callable[[], object] | None = None,
                task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until `shutdown` is set; reports the bound port once listening.

    `after_fanout` is called after each tick's frames went out to the clients.

    Raises OSError naming [server] host/port when the address cannot be bound.
    """
    config = hypercorn_config(server)
    sock = bind(server.host, server.port, BACKLOG)
    try:
        port = sock.getsockname()[1]
        connections = Connections()
        fanout = Fanout(hub, server, connections, after_pass=after_fanout)
        app = build_app(supervisor, hub, server, fanout)
        stop_http = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fanout.broadcast)
            nursery.start_soon(fanout.watchdog)
            async with trio.open_nursery() as http:
                http.start_soon(lambda: serve_asgi(
                    app, config, sock, connections=connections,
                    compression=server.compression, shutdown_trigger=stop_http.wait))
                task_status.started(port)
                await shutdown.wait()
                await fanout.close_all(GOING_AWAY)
                stop_http.set()
            nursery.cancel_scope.cancel()
    finally:
        sock.close()
