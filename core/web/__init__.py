"""Port 9000: the dashboard page, REST, Prometheus metrics and `/ws`.

    await nursery.start(serve, supervisor, hub, server, shutdown=event)  # -> bound port

Shutdown order: every WebSocket gets close 1001 from us (hypercorn alone
would drop them, 1006 for the clients), then hypercorn finishes the HTTP
requests in flight and the listening socket closes.
"""

from __future__ import annotations

from collections.abc import Callable

import trio
from hypercorn.config import Config as HyperConfig

from core.config import ServerConfig
from core.hub import Hub
from core.web.app import SupervisorAPI, build_app
from core.web.frames import GOING_AWAY
from core.web.gate import Gate, connection_budget
from core.web.listener import Listener, bind
from core.web.security import Auth
from core.web.ws import Fanout

__all__ = ["serve"]

#: Listen backlog: a reconnect storm must not find it full.
BACKLOG = 2048


def hypercorn_config(server: ServerConfig) -> HyperConfig:
    config = HyperConfig()
    config.backlog = BACKLOG
    config.graceful_timeout = 2.0
    config.accesslog = None
    # Port 9000 speaks HTTP/1.1 only: HTTP/2's control frames are not bounded here.
    config.alpn_protocols = ["http/1.1"]
    if server.tls_cert is not None and server.tls_key is not None:
        config.certfile = str(server.tls_cert)
        config.keyfile = str(server.tls_key)
    return config


async def serve(supervisor: SupervisorAPI | None, hub: Hub, server: ServerConfig, *,
                shutdown: trio.Event, after_fanout: Callable[[], object] | None = None,
                task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until `shutdown` is set; reports the bound port once listening.

    `after_fanout` is called after each tick's frames went out to the clients.

    Raises OSError naming [server] host/port when the address cannot be bound.
    """
    config = hypercorn_config(server)
    sock = bind(server.host, server.port, BACKLOG)
    try:
        port = sock.getsockname()[1]
        auth = Auth(server.token, rate=server.auth_failure_rate)
        fanout = Fanout(hub, server, auth, after_pass=after_fanout)
        gate = Gate(connection_budget(server.max_connections),
                    server.max_connections_per_address)
        listener = Listener(build_app(supervisor, hub, server, fanout), config, fanout, gate)
        stop_http = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fanout.broadcast)
            nursery.start_soon(fanout.watchdog)
            async with trio.open_nursery() as http:
                http.start_soon(lambda: listener.serve(sock, shutdown_trigger=stop_http.wait))
                task_status.started(port)
                await shutdown.wait()
                await fanout.close_all(GOING_AWAY)
                stop_http.set()
            nursery.cancel_scope.cancel()
    finally:
        sock.close()
