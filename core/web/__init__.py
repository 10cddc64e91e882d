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
from core.events import EventLog
from core.hub import Hub
from core.identity import AuthConfig
from core.signing import Signer, load_signing_key
from core.web.app import SupervisorAPI, build_app
from core.web.frames import GOING_AWAY
from core.web.gate import RESERVED_DESCRIPTORS, Gate, connection_budget
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
                auth_config: AuthConfig | None = None, events: EventLog | None = None,
                notifiers: list[Any] | None = None,
                reserved_descriptors: int = RESERVED_DESCRIPTORS,
                task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until `shutdown` is set; reports the bound port once listening.

    `after_fanout` is called after each tick's frames went out to the clients;
    `auth_config` is the `[auth]` table (JSON Web Tokens), if any; `events`
    the event log (GET /api/events, /ws subscribers) and `notifiers` its
    notifiers (their failures in /metrics); `reserved_descriptors` what the
    connections may never take (the supervisor's own: children, logs, /proc).

    Raises OSError naming [server] host/port when the address cannot be bound.
    """
    config = hypercorn_config(server)
    sock = bind(server.host, server.port, BACKLOG)
    try:
        port = sock.getsockname()[1]
        auth = Auth(server.token, rate=server.auth_failure_rate, config=auth_config)
        signer = (Signer(load_signing_key(server.signing_key))
                  if server.signing_key is not None else None)
        fanout = Fanout(hub, server, auth, after_pass=after_fanout, signer=signer,
                        events=events)
        gate = Gate(connection_budget(server.max_connections, reserved_descriptors),
                    server.max_connections_per_address)
        listener = Listener(build_app(supervisor, hub, server, fanout, notifiers), config,
                            fanout, gate)
        stop_http = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fanout.broadcast)
            nursery.start_soon(fanout.watchdog)
            nursery.start_soon(fanout.forward_events)
            async with trio.open_nursery() as http:
                http.start_soon(lambda: listener.serve(sock, shutdown_trigger=stop_http.wait))
                task_status.started(port)
                await shutdown.wait()
                await fanout.close_all(GOING_AWAY)
                stop_http.set()
            nursery.cancel_scope.cancel()
    finally:
        sock.close()
