"""`/ws`: the snapshot stream. One fan-out pass per tick, one task per client.

Each client is a trio-websocket connection over a `ClientConn`, the one
place its bytes reach its socket. Every tick, `Fanout.broadcast` walks the
clients once and writes the tick's frame (the hub's JSON text, framed once;
or the text cached for a subscription filter) to each socket that takes it
without waiting: a plain non-blocking write, no per-client task switch. A
client that cannot take it at once (partial write, data it has not drained
yet, TLS) is handed to its own task, which sends it the latest snapshot
when it can: a slow client skips stale snapshots and delays nobody, and
holds one reference at most.

A client whose kernel send queue still holds data it has not taken gets
nothing new; stalled for `STUCK_INTERVALS` intervals, it is closed with
1008 (delivered after what was queued). A send that blocks that long (every
send is shielded, so a frame is never cut in half) has its socket cut,
which ends the send at once.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from core.config import ServerConfig
from core.events import EventLog
from core.hub import MAX_CACHED_FILTERS, Hub, Snapshot
from core.identity import Identity
from core.signing import Signer
from core.web.conn import ClientConn
from core.web.frames import (
    GOING_AWAY,
    INTERNAL,
    POLICY,
    TRY_AGAIN_LATER,
    Bucket,
    FrameMeter,
    close_frame,
    text_frame,
)
from core.web.head import Head
from core.web.security import (
    ANYONE,
    Auth,
    Denied,
    host_ok,
    host_refusal,
    origin_ok,
    request_token,
)
from core.web.subscription import parse_subscription
from core.web.wsclient import Client as _Client

log = logging.getLogger(__name__)

#: A client stalled (or a send blocked) this many intervals is dropped.
STUCK_INTERVALS = 3.0
#: Seconds to wait for the client's answer to our close frame.
CLOSE_WAIT = 1.0
#: Events kept for a client that has not taken them yet.
EVENTS_PER_CLIENT = 100

_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionClosed)


class Fanout:
    """The `/ws` clients: who may connect, the tick's fan-out, each client's tasks."""

    def __init__(self, hub: Hub, server: ServerConfig, auth: Auth,
                 after_pass: Callable[[], object] | None = None,
                 signer: Signer | None = None, events: EventLog | None = None) -> None:
        self.hub = hub
        self.events = events
        self.auth = auth
        self.signer = signer
        # The tick's signed texts, one per distinct text (bounded like the frames).
        self._signed: dict[str, str] = {}
        self._signed_seq = -1
        #: Called after each tick's fan-out pass (the paced garbage collector).
        self.after_pass = after_pass
        self.server = server
        self.clients: set[_Client] = set()
        self.closing = False
        self._empty = trio.Event()
        self._empty.set()
        self._rate_text = f"{server.message_rate:g}"
        # The tick's WebSocket frames, one per distinct text (filters).
        self._frames: dict[str, bytes] = {}
        self._frames_seq = -1

    # -- admission ---------------------------------------------------------------

    def admit(self, head: Head, address: str) -> Identity | tuple[int, str]:
        """Who this (well-formed) handshake is; or (status, why) it may not connect."""
        host = head.headers.get("host")
        if not host_ok(host, self.server.allowed_hosts):
            return 403, host_refusal(host)
        try:
            identity = self.auth.authorize(request_token(head.headers, head.query), address,
                                           "viewer")
        except Denied as denied:
            return denied.status, denied.message
        if not origin_ok(head.headers.get("origin"), scheme="ws" if not self.server.tls_cert
                         else "wss", host=head.headers.get("host"),
                         allowed=self.server.allowed_origins):
            return 403, "origin not allowed"
        return identity

    def meter(self) -> FrameMeter:
        """A new client's frame meter: every frame counts against `message_rate`."""
        return FrameMeter(self.server.max_message_bytes,
                          Bucket(self.server.message_rate, trio.current_time()),
                          self._rate_text)

    # -- lifecycle -------------------------------------------------------------

    async def watchdog(self) -> None:
        """Cut off clients whose send has been blocked for too long."""
        limit = STUCK_INTERVALS * self.hub.interval
        seq = 0
        while True:
            # Woken with the fan-out by each snapshot (no wake-up of its own),
            # or after an interval and a half without one.
            with trio.move_on_after(self.hub.interval * 1.5):
                seq = (await self.hub.wait_after(seq)).seq
            now = trio.current_time()
            for client in list(self.clients):
                started = client.conn.send_started
                if started is not None and now - started > limit:
                    log.info("websocket client %s blocked a send for %.1f s: disconnecting",
                             client.peer, now - started)
                    client.stop(POLICY, "client not reading")
                    client.conn.abort()

    async def close_all(self, code: int = GOING_AWAY, *, timeout: float = 2.0) -> None:
        """Send `code` to every client and wait (bounded) until all are gone."""
        self.closing = True
        for client in list(self.clients):
            client.stop(code, "server shutting down")
        with trio.move_on_after(timeout):
            await self._empty.wait()
        for client in list(self.clients):  # stuck ones: cut, do not wait
            client.conn.abort()

    # -- one connection ----------------------------------------------------------

    async def serve(self, ws: WebSocketConnection, conn: ClientConn,
                    nursery: trio.Nursery, identity: Identity = ANYONE) -> None:
        """Serve one accepted client until it or the server closes.

        Its sender runs in `nursery`, the connection's own (where
        trio-websocket's reader runs too): one nursery per client, not three.
        """
        client = _Client(ws, conn)
        if self.closing:
            client.close_code, client.close_reason = GOING_AWAY, "server shutting down"
        elif len(self.clients) >= self.server.max_clients:
            client.close_code, client.close_reason = (
                TRY_AGAIN_LATER, f"too many clients (max_clients = {self.server.max_clients})")
        if client.close_code is not None:
            await self._close(client)
            return
        self.clients.add(client)
        self._empty = trio.Event()
        if identity.exp is not None:
            nursery.start_soon(self._expire, client, identity.exp)
        try:
            await self._serve_client(client, nursery)
        finally:
            # Only now: until its close frame is out, the watchdog and
            # close_all must still see it (a blocked send gets its socket cut).
            self.clients.discard(client)
            if not self.clients:
                self._empty.set()

    async def _expire(self, client: _Client, exp: float) -> None:
        """Close with 1008 "token expired" at the token's exp: the user is told, no retry.

        Runs in the connection's nursery, which is cancelled when the client goes.
        """
        await trio.sleep(max(0.0, exp - time.time()))
        client.stop(POLICY, "token expired")

    async def _serve_client(self, client: _Client, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._sender, client)
        try:
            with client.cancel:
                await self._receiver(client)
        except Exception:
            log.exception("websocket client %s: internal error", client.peer)
            client.close_code, client.close_reason = INTERNAL, "internal error"
        finally:
            client.closing = True
        verdict = client.conn.meter.verdict
        if verdict is not None and client.close_code is None:
            client.close_code, client.close_reason = verdict
        if client.close_code is not None:
            await self._close(client)

    async def _close(self, client: _Client) -> None:
        """Send the client's close frame, wait (bounded) for its answer."""
        conn, code, reason = client.conn, client.close_code or GOING_AWAY, client.close_reason
        with trio.CancelScope(shield=True):
            if conn.partial or conn.cut:
                return  # half a frame is out, or the socket is gone: no close frame
            if conn.meter.verdict is not None:
                # trio-websocket stopped reading: the frame and the drain are ours.
                try:
                    await conn.send_all(close_frame(code, reason))
                except _GONE:
                    return
                await conn.drain_until_close(CLOSE_WAIT)
            elif client.ws.closed is None:
                with trio.move_on_after(CLOSE_WAIT):
                    await client.ws.aclose(code, reason)

    async def broadcast(self) -> None:
        """The fan-out: one pass of non-blocking writes per tick.

        Most clients take the tick's frame at once; the others (a partial
        write, a client that has not drained, TLS) are handed to their own
        task, so no client ever waits for another.
        """
        seq = 0
        while True:
            snap = await self.hub.wait_after(seq)
            seq = snap.seq
            for client in list(self.clients):
                if client.seq >= seq or client.closing:
                    continue
                if client.conn.plain and not client.busy:
                    try:
                        text = self._text(snap, client)
                    except Exception:  # one client's trouble must not stop the fan-out
                        log.exception("websocket client %s: internal error", client.peer)
                        client.stop(INTERNAL, "internal error")
                        continue
                    sent = client.conn.try_send(self._frame(seq, text))
                    if sent is None:
                        continue  # gone: its reader tells the client's tasks
                    if sent:
                        client.seq = seq
                        if not client.conn.partial:
                            continue  # else its own task writes the rest
                client.wake()
            if self.after_pass is not None:
                try:
                    self.after_pass()
                except Exception:  # must not stop the next tick's fan-out
                    log.exception("after the fan-out pass")

    async def _sender(self, client: _Client) -> None:
        """Whatever the fan-out loop could not do at once, for one client."""
        # No cancel scope of its own (one per client is memory at 10,000): it
        # ends with the connection's nursery, and a close frame once out
        # refuses any data frame after it (ClientConn).
        try:
            await self._send_when_woken(client)
        except Exception:
            log.exception("websocket client %s: internal error", client.peer)
            client.stop(INTERNAL, "internal error")

    async def _send_when_woken(self, client: _Client) -> None:
        hub, conn = self.hub, client.conn
        poll = hub.interval / 4
        limit = STUCK_INTERVALS * hub.interval
        stalled_since: float | None = None
        client.wake()  # the latest snapshot at once
        while True:
            await client.woken()
            client.busy = True
            try:
                if conn.partial:
                    await conn.finish()
                while client.events:
                    await conn.send_all(text_frame(client.events.popleft()))
                while (snap := hub.latest) is not None and snap.seq > client.seq:
                    if conn.unsent() > 0:
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
                    text = self._text(snap, client)
                    client.seq = snap.seq
                    await conn.send_all(self._frame(snap.seq, text))
            except _GONE:
                return  # its reader reports the disconnect to _receiver
            finally:
                client.busy = False

    async def forward_events(self) -> None:
        """Each event to the clients that subscribed with "events": true (not to others)."""
        if self.events is None:
            return
        last = self.events.recent[-1].id if self.events.recent else 0
        while True:
            fresh = await self.events.wait_after(last)
            last = fresh[-1].id
            texts = [json.dumps(e.as_dict()) for e in fresh]
            for client in list(self.clients):
                if client.events is not None and not client.closing:
                    client.events.extend(texts)  # bounded: a slow one loses the oldest
                    client.wake()

    def _text(self, snap: Snapshot, client: _Client) -> str:
        """What this client gets of `snap`: its filter's text, signed if it asked."""
        text = self.hub.filtered_text(snap, client.components, client.metrics)
        if not client.signed or self.signer is None:
            return text
        if snap.seq != self._signed_seq:
            self._signed, self._signed_seq = {}, snap.seq
        signed = self._signed.get(text)
        if signed is None:
            signed = self.signer.sign(text)
            if len(self._signed) < MAX_CACHED_FILTERS:
                self._signed[text] = signed
        return signed

    def _frame(self, seq: int, text: str) -> bytes:
        if seq != self._frames_seq:
            self._frames, self._frames_seq = {}, seq
        frame = self._frames.get(text)
        if frame is None:
            frame = text_frame(text)
            if len(self._frames) < MAX_CACHED_FILTERS:  # as many as the hub caches texts
                self._frames[text] = frame
        return frame

    async def _receiver(self, client: _Client) -> None:
        ws = client.ws
        while True:
            try:
                data = await ws.get_message()
            except ConnectionClosed:
                return  # closed by the client, by a protocol error, or past a limit
            error = self._handle(client, data)
            try:
                if error is not None:
                    await ws.send_message(json.dumps({"type": "error", "error": error}))
                elif (snap := self.hub.latest) is not None:
                    # A new subscription shows at once, not a tick later.
                    await client.conn.send_all(text_frame(self._text(snap, client)))
            except _GONE:
                return

    def _handle(self, client: _Client, data: str | bytes) -> str | None:
        """Apply one client message; the error text for a bad one."""
        sub = parse_subscription(data, can_sign=self.signer is not None)
        if isinstance(sub, str):
            return sub
        client.signed = sub.signed
        client.events = deque(maxlen=EVENTS_PER_CLIENT) if sub.events else None
        client.components = sub.components
        client.metrics = sub.metrics
        return None
