"""`/ws`: the snapshot stream. One fan-out pass per tick, one task per client.

Every tick, `Fanout.broadcast` walks the clients once and writes the tick's
frame (the hub's JSON text, framed once; or the text cached for a
subscription filter) to each socket that takes it without waiting: a plain
non-blocking write, no per-client task switch. A client that cannot take it
at once (partial write, data it has not drained yet, TLS, HTTP/2,
compression) is handed to its own task, which sends it the latest snapshot
when it can: a slow client skips stale snapshots and delays nobody, and
holds one reference at most.

A client whose kernel send queue still holds data it has not taken gets
nothing new; stalled for `STUCK_INTERVALS` intervals, it is closed with
1008 (delivered after what was queued). A send that blocks that long
(hypercorn shields its socket writes from cancellation) has its socket cut,
which ends the send at once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import trio
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from core.config import ServerConfig
from core.hub import Hub, Snapshot, normalise_metrics
from core.web._hypercorn import Connections, Partial, text_frame
from core.web.security import RateLimiter, origin_ok, request_token, token_ok

log = logging.getLogger(__name__)

#: A client stalled (or a send blocked) this many intervals is dropped.
STUCK_INTERVALS = 3.0
#: Seconds to wait for the client's answer to our close frame.
CLOSE_WAIT = 1.0
#: Close codes (RFC 6455 section 7.4.1).
NORMAL, GOING_AWAY, POLICY, TOO_BIG, INTERNAL, TRY_AGAIN_LATER = (
    1000, 1001, 1008, 1009, 1011, 1013)


class _Client:
    __slots__ = ("_wake", "busy", "cancel", "close_code", "close_reason", "closing",
                 "components", "metrics", "peer", "raw", "send_started", "seq")

    def __init__(self, peer: Any, raw: bool) -> None:
        self.peer = peer
        #: Snapshots go out as the tick's pre-encoded frame, straight to the socket.
        self.raw = raw
        self.components: frozenset[str] | None = None
        self.metrics: frozenset[str] | None = None
        #: The seq of the last snapshot sent to this client.
        self.seq = 0
        #: The client's own task is sending (the fan-out loop leaves it alone).
        self.busy = False
        #: trio time when the send in flight began; None when idle.
        self.send_started: float | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        #: Its tasks are done: nothing but the close frame may follow.
        self.closing = False
        self.cancel = trio.CancelScope()
        self._wake = trio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def woken(self) -> None:
        await self._wake.wait()
        self._wake = trio.Event()

    def stop(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self.cancel.cancel()


class Fanout:
    """The ASGI app behind `/ws` and the registry of its clients."""

    def __init__(self, hub: Hub, server: ServerConfig, connections: Connections,
                 after_pass: Callable[[], object] | None = None) -> None:
        self.hub = hub
        #: Called after each tick's fan-out pass (the paced garbage collector).
        self.after_pass = after_pass
        self.server = server
        self.connections = connections
        self.clients: set[_Client] = set()
        self.closing = False
        self._empty = trio.Event()
        self._empty.set()
        # The tick's WebSocket frames, one per distinct text (filters).
        self._frames: dict[str, bytes] = {}
        self._frames_seq = -1
        # Frames the fan-out loop could write only in part, for the client's task.
        self._partials: dict[_Client, Partial] = {}

    # -- lifecycle -------------------------------------------------------------

    async def watchdog(self) -> None:
        """Cut off clients whose send has been blocked for too long."""
        limit = STUCK_INTERVALS * self.hub.interval
        while True:
            await trio.sleep(self.hub.interval)
            now = trio.current_time()
            for client in list(self.clients):
                started = client.send_started
                if started is not None and now - started > limit:
                    log.info("websocket client %s blocked a send for %.1f s: disconnecting",
                             client.peer, now - started)
                    client.stop(POLICY, "client not reading")
                    self.connections.abort(client.peer)

    async def close_all(self, code: int = GOING_AWAY, *, timeout: float = 2.0) -> None:
        """Send `code` to every client and wait (bounded) until all are gone."""
        self.closing = True
        for client in list(self.clients):
            client.stop(code, "server shutting down")
        with trio.move_on_after(timeout):
            await self._empty.wait()
        for client in list(self.clients):  # stuck ones: cut, do not wait
            self.connections.abort(client.peer)

    # -- one connection ----------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        ws = WebSocket(scope, receive, send)
        headers = ws.headers
        if not token_ok(self.server.token, request_token(headers, scope.get("query_string"))):
            await ws.send_denial_response(JSONResponse(
                {"success": False, "error": "missing or wrong token"}, status_code=401))
            return
        if not origin_ok(headers.get("origin"), scheme=scope.get("scheme", "ws"),
                         host=headers.get("host"), allowed=self.server.allowed_origins):
            await ws.send_denial_response(JSONResponse(
                {"success": False, "error": "origin not allowed"}, status_code=403))
            return
        await ws.accept()
        if self.closing:
            await _close(send, receive, GOING_AWAY, "server shutting down")
            return
        if len(self.clients) >= self.server.max_clients:
            await _close(send, receive, TRY_AGAIN_LATER,
                         f"too many clients (max_clients = {self.server.max_clients})")
            return
        peer = scope.get("client")
        # HTTP/1.1 without compression: the frame bytes are the same for every
        # client (server frames are not masked), so they are built once per
        # tick. HTTP/2 streams and deflate need hypercorn's per-message path.
        raw = (scope.get("http_version") == "1.1" and not self.server.compression
               and peer in self.connections)
        client = _Client(peer, raw)
        self.clients.add(client)
        self._empty = trio.Event()
        try:
            await self._serve_client(client, receive, send)
        finally:
            # Only now: until its close frame is out, the watchdog and
            # close_all must still see it (a blocked send gets its socket cut).
            self.clients.discard(client)
            if not self.clients:
                self._empty.set()

    async def _serve_client(self, client: _Client, receive: Any, send: Any) -> None:
        try:
            with client.cancel:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._sender, client, send)
                    await self._receiver(client, receive, send)
                    nursery.cancel_scope.cancel()
        except Exception:
            log.exception("websocket client %s: internal error", client.peer)
            client.close_code, client.close_reason = INTERNAL, "internal error"
        finally:
            client.closing = True
            partial = self._partials.pop(client, None)
            if partial is not None:
                # Half a frame is out: nothing else may follow on this socket.
                self.connections.abort(client.peer)
                partial.server.send_lock.release()
                client.close_code = None
        if client.close_code is not None:
            with trio.CancelScope(shield=True):
                await self._send(client, send, {"type": "websocket.close",
                                                "code": client.close_code,
                                                "reason": client.close_reason})
                await _drain(receive, CLOSE_WAIT)

    async def _send(self, client: _Client, send: Any, message: dict[str, Any]) -> None:
        client.send_started = trio.current_time()
        try:
            await send(message)
        finally:
            client.send_started = None

    async def broadcast(self) -> None:
        """The fan-out: one pass of non-blocking writes per tick.

        Most clients take the tick's frame at once; the others (a partial
        write, a client that has not drained, TLS, HTTP/2, compression) are
        handed to their own task, so no client ever waits for another.
        """
        seq = 0
        while True:
            snap = await self.hub.wait_after(seq)
            seq = snap.seq
            for client in list(self.clients):
                if client.seq >= seq or client.closing:
                    continue
                if client.raw and not client.busy:
                    try:
                        text = self.hub.filtered_text(snap, client.components, client.metrics)
                    except Exception:  # one client's trouble must not stop the fan-out
                        log.exception("websocket client %s: internal error", client.peer)
                        client.stop(INTERNAL, "internal error")
                        continue
                    sent = self.connections.try_send(client.peer, self._frame(seq, text))
                    if sent is True:
                        client.seq = seq
                        continue
                    if sent is None:
                        continue  # gone: hypercorn tells the client's receiver
                    if sent is not False:  # a Partial: the client's task finishes it
                        client.seq = seq
                        self._partials[client] = sent
                client.wake()
            if self.after_pass is not None:
                try:
                    self.after_pass()
                except Exception:  # must not stop the next tick's fan-out
                    log.exception("after the fan-out pass")

    async def _sender(self, client: _Client, send: Any) -> None:
        """Whatever the fan-out loop could not do at once, for one client."""
        hub = self.hub
        poll = hub.interval / 4
        limit = STUCK_INTERVALS * hub.interval
        stalled_since: float | None = None
        client.wake()  # the latest snapshot at once
        while True:
            await client.woken()
            client.busy = True
            try:
                partial = self._partials.pop(client, None)
                if partial is not None:
                    await self._timed(client, self.connections.finish(partial))
                while (snap := hub.latest) is not None and snap.seq > client.seq:
                    if self.connections.unsent_bytes(client.peer) > 0:
                        # Not drained since the last send: it gets only the latest,
                        # once it has; stuck for too long, it is closed.
                        now = trio.current_time()
                        if stalled_since is None:
                            stalled_since = now
                        elif now - stalled_since > limit:
                            client.stop(POLICY, "client not reading")
                            return
                        await trio.sleep(poll)
                        continue
                    stalled_since = None
                    text = hub.filtered_text(snap, client.components, client.metrics)
                    client.seq = snap.seq
                    if client.raw:
                        await self._timed(client, self.connections.send_raw(
                            client.peer, self._frame(snap.seq, text)))
                    else:
                        await self._send(client, send, {"type": "websocket.send",
                                                        "text": text})
            except ConnectionError:
                return  # hypercorn's reader reports the disconnect to _receiver
            finally:
                client.busy = False

    async def _timed(self, client: _Client, sending: Any) -> None:
        client.send_started = trio.current_time()
        try:
            await sending
        finally:
            client.send_started = None

    def _frame(self, seq: int, text: str) -> bytes:
        if seq != self._frames_seq:
            self._frames, self._frames_seq = {}, seq
        frame = self._frames.get(text)
        if frame is None:
            frame = self._frames[text] = text_frame(text)
        return frame

    async def _receiver(self, client: _Client, receive: Any, send: Any) -> None:
        limiter = RateLimiter(self.server.message_rate)
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            size = len(data.encode() if isinstance(data, str) else data)
            if size > self.server.max_message_bytes:
                client.stop(TOO_BIG, f"message larger than {self.server.max_message_bytes} bytes")
                return
            if not limiter.allow("messages"):
                client.stop(POLICY, f"more than {self.server.message_rate:g} messages/s")
                return
            error = self._handle(client, data)
            if error is not None:
                reply = json.dumps({"type": "error", "error": error})
                await self._send(client, send, {"type": "websocket.send", "text": reply})
            elif self.hub.latest is not None:
                await self._send_latest(client, send, self.hub.latest)

    async def _send_latest(self, client: _Client, send: Any, snap: Snapshot) -> None:
        # A new subscription shows at once, not a tick later.
        text = self.hub.filtered_text(snap, client.components, client.metrics)
        await self._send(client, send, {"type": "websocket.send", "text": text})

    def _handle(self, client: _Client, data: str | bytes) -> str | None:
        """Apply one client message; the error text for a bad one."""
        try:
            msg = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            return f"expected a JSON object, got invalid JSON: {exc}"
        if not isinstance(msg, dict):
            return f"expected a JSON object, got {type(msg).__name__}"
        kind = msg.get("type")
        if kind != "subscribe":
            return f"unknown message type {kind!r}; expected 'subscribe'"
        parsed: dict[str, frozenset[str] | None] = {}
        for key in ("components", "metrics"):
            value = msg.get(key)
            if value is not None and not (isinstance(value, list)
                                          and all(isinstance(v, str) for v in value)):
                return f"subscribe: {key!r} must be a list of strings"
            parsed[key] = None if value is None else frozenset(value)
        unknown = set(msg) - {"type", "components", "metrics"}
        if unknown:
            return f"subscribe: unknown keys {sorted(unknown)}"
        client.components = parsed["components"]
        metrics = parsed["metrics"]
        client.metrics = None if metrics is None else normalise_metrics(metrics)
        return None


async def _close(send: Any, receive: Any, code: int, reason: str) -> None:
    await send({"type": "websocket.close", "code": code, "reason": reason})
    await _drain(receive, CLOSE_WAIT)


async def _drain(receive: Any, timeout: float) -> None:
    """Read until the client answers our close frame (bounded).

    Returning earlier lets hypercorn close the socket with the client's
    unread messages in its buffer: the kernel then resets the connection
    and the client sees 1006 instead of our close code.
    """
    with trio.move_on_after(timeout):
        while (await receive())["type"] != "websocket.disconnect":
            pass
