"""One `/ws` client's state: its connection, its subscription, its progress.

Shared by the fan-out pass and the client's own tasks (core/web/ws.py).
"""

from __future__ import annotations

from collections import deque

import trio
from trio_websocket import WebSocketConnection

from core.web.conn import ClientConn


class Client:
    __slots__ = ("_wake", "busy", "cancel", "close_code", "close_reason", "closing",
                 "components", "conn", "events", "metrics", "seq", "signed",
                 "ws")

    def __init__(self, ws: WebSocketConnection, conn: ClientConn) -> None:
        self.ws = ws
        self.conn = conn
        self.components: frozenset[str] | None = None
        self.metrics: frozenset[str] | None = None
        #: It asked for each snapshot as a JWS.
        self.signed = False
        #: Events for it not sent yet (it subscribed with "events": true), or None.
        self.events: deque[str] | None = None
        #: The seq of the last snapshot sent to this client.
        self.seq = 0
        #: The client's own task is sending (the fan-out loop leaves it alone).
        self.busy = False
        self.close_code: int | None = None
        self.close_reason = ""
        #: Its tasks are done: nothing but the close frame may follow.
        self.closing = False
        #: The receiver's scope (the sender ends with the connection's nursery).
        self.cancel = trio.CancelScope()
        self._wake = trio.Event()

    @property
    def peer(self) -> object:
        return self.conn.peer

    def wake(self) -> None:
        self._wake.set()

    async def woken(self) -> None:
        await self._wake.wait()
        self._wake = trio.Event()

    def stop(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self.cancel.cancel()
