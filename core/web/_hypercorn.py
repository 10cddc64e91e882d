"""Hypercorn's trio worker, run under our own listener loop.

`hypercorn.trio.serve` hides three things the web layer needs: the bound
sockets (port 0, a clear error when the port is taken), the transport of
each connection (to cut off a WebSocket client that stopped reading: a send
to it blocks inside hypercorn, shielded from cancellation; and to write the
tick's pre-encoded frame without hypercorn's per-message layers) and the
order of shutdown (our 1001 close frames first, then hypercorn's own). So this module
does what `hypercorn.trio.run.worker_serve` does, minus lifespan and
multi-worker plumbing, with hypercorn's own per-connection `TCPServer`.

It also makes permessage-deflate optional: hypercorn accepts it whenever a
client offers it. `Handshake` below forgets the offer when the serving task
set `COMPRESSION` to False (context variables flow from the serving task to
every connection task it spawns), so other hypercorn servers in the process
keep the stock behaviour.
"""

from __future__ import annotations

import base64
import contextvars
import errno
import fcntl
import json
import os
import socket
import termios
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from io import BytesIO, StringIO
from typing import Any

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.protocol import h2, h11, ws_stream
from hypercorn.protocol.events import Body, EndBody, Response, StreamClosed
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import parse_socket_addr, wrap_app
from wsproto.connection import ConnectionState as WSState
from wsproto.events import CloseConnection, Message, Ping, TextMessage

#: Whether WebSocket handshakes of the current server may negotiate
#: permessage-deflate (hypercorn's behaviour is True).
COMPRESSION: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "control_center_ws_compression", default=True)


#: Whether refused WebSocket handshakes of the current server say why (JSON
#: body, 426 for a version mismatch, malformed keys refused); hypercorn's
#: behaviour is an empty 400, and a 101 for any key.
CLEAR_ERRORS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "control_center_ws_clear_errors", default=False)


class _Handshake(ws_stream.Handshake):
    def __init__(self, headers: list[tuple[bytes, bytes]], http_version: str) -> None:
        super().__init__(headers, http_version)
        if not COMPRESSION.get():
            # No offer seen -> no extension negotiated, no deflate state kept.
            self.extensions = None

    def is_valid(self) -> bool:
        return super().is_valid() and (not CLEAR_ERRORS.get() or self.problem() is None)

    def problem(self) -> tuple[int, str] | None:
        """Why this handshake is refused, as (status, message); None when it is fine."""
        if self.version != b"13":
            got = "none" if self.version is None else repr(self.version.decode("latin-1"))
            return 426, f"unsupported Sec-WebSocket-Version {got}: this server speaks 13"
        if self.http_version == "1.1":  # HTTP/2 (RFC 8441) has no key
            if self.key is None:
                return 400, "missing Sec-WebSocket-Key"
            try:
                nonce = base64.b64decode(self.key, validate=True)
            except ValueError:
                nonce = b""
            if len(nonce) != 16:
                return 400, "Sec-WebSocket-Key must be 16 random bytes in base64 (RFC 6455 4.1)"
        if not super().is_valid():
            return 400, ("not a WebSocket upgrade (HTTP/1.1 GET with Connection: Upgrade "
                         "and Upgrade: websocket)")
        return None


# hypercorn looks the class up in its module at each handshake.
ws_stream.Handshake = _Handshake  # type: ignore[misc]

#: Whether WebSocket streams of the current server hand an oversized message
#: to the app cut at max size + 1 (True) or close it with 1009 themselves.
BOUNDED_MESSAGES: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "control_center_ws_bounded", default=False)


class _WSStream(ws_stream.WSStream):
    """hypercorn's WebSocket stream, with memory bounded by the message limit.

    hypercorn writes each fragment into its buffer before it checks the size
    and keeps writing after it sent 1009, so one client could make the server
    hold any amount (200 MB measured for a 200 MB message); and it stops
    reading events after the 1009, which leaves the client's close answer
    unread and the connection (and its `max_clients` slot) open. Here an
    oversized message is handed to the app as its first max size + 1
    characters, the rest is dropped as it arrives, and reading goes on: the
    app refuses it with 1009 and waits for the client's answer as for any
    close of its own.
    """

    _dropping = False

    async def _send_error_response(self, status_code: int) -> None:
        handshake = getattr(self, "handshake", None)
        if not CLEAR_ERRORS.get() or status_code != 400 or not isinstance(handshake, _Handshake):
            await super()._send_error_response(status_code)
            return
        status, message = handshake.problem() or (400, "bad WebSocket handshake")
        body = json.dumps({"success": False, "error": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length",
                   str(len(body)).encode()), (b"connection", b"close")]
        if status == 426:
            headers.append((b"sec-websocket-version", b"13"))  # RFC 6455 4.4
        await self.send(Response(stream_id=self.stream_id, status_code=status,
                                 headers=headers))
        await self.send(Body(stream_id=self.stream_id, data=body))
        await self.send(EndBody(stream_id=self.stream_id))
        await self.config.log.access(self.scope, {"status": status, "headers": []},
                                     time.time() - self.start_time)

    async def _handle_events(self) -> None:
        if not BOUNDED_MESSAGES.get():
            await super()._handle_events()
            return
        for event in self.connection.events():
            if isinstance(event, Message):
                if self._dropping:  # the rest of a message already handed over
                    self._dropping = not event.message_finished
                    continue
                buf = self.buffer
                room = buf.max_length + 1 - buf.length
                if len(event.data) < room:
                    buf.extend(event)  # cannot exceed the limit: never raises
                    if not event.message_finished:
                        continue
                else:
                    if buf.value is None:
                        buf.value = (StringIO() if isinstance(event, TextMessage)
                                     else BytesIO())
                    buf.length += buf.value.write(event.data[:room])
                    self._dropping = not event.message_finished
                await self.app_put(buf.to_message())
                buf.clear()
            elif isinstance(event, Ping):
                await self._send_wsproto_event(event.response())
            elif isinstance(event, CloseConnection):
                if self.connection.state == WSState.REMOTE_CLOSING:
                    await self._send_wsproto_event(event.response())
                elif self.connection.state == WSState.OPEN:
                    # wsproto found a protocol error (bad opcode, unmasked
                    # frame, invalid UTF-8...): say so (RFC 6455 7.1.7), where
                    # hypercorn just drops the connection (1006 for the client).
                    await self._send_wsproto_event(
                        CloseConnection(code=event.code, reason=(event.reason or "")[:120]))
                await self.send(StreamClosed(stream_id=self.stream_id))


# The protocols look the class up in their own modules.
h11.WSStream = _WSStream  # type: ignore[misc]
h2.WSStream = _WSStream  # type: ignore[misc]


class Connections:
    """The live connections, by client address.

    Lets the fan-out see how much a client has left unread, cut off one that
    is stuck, and write pre-encoded WebSocket frames to it directly.
    """

    def __init__(self) -> None:
        self._servers: dict[tuple[str, int], _TCPServer] = {}

    def add(self, peer: tuple[str, int], server: _TCPServer) -> None:
        self._servers[peer] = server

    def remove(self, peer: tuple[str, int], server: _TCPServer) -> None:
        if self._servers.get(peer) is server:
            del self._servers[peer]

    def __contains__(self, peer: Any) -> bool:
        return peer is not None and tuple(peer) in self._servers

    def _socket(self, peer: Any) -> trio.socket.SocketType | None:
        server = self._servers.get(tuple(peer)) if peer else None
        if server is None:
            return None
        stream = getattr(server.stream, "transport_stream", server.stream)  # TLS: below
        return getattr(stream, "socket", None)

    def unsent_bytes(self, peer: Any) -> int:
        """Bytes queued in the kernel for this client and not yet taken by it.

        0 when unknown (no such connection, not Linux): callers then rely on
        the send deadline alone.
        """
        sock = self._socket(peer)
        if sock is None:
            return 0
        try:
            buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        except (OSError, ValueError):
            return 0
        return int.from_bytes(buf, "little", signed=True)

    def abort(self, peer: Any) -> bool:
        """Close the client's socket now; a send blocked on it fails at once."""
        sock = self._socket(peer)
        if sock is None:
            return False
        sock.close()  # trio wakes the blocked sender with ClosedResourceError
        return True

    async def send_raw(self, peer: Any, data: bytes) -> None:
        """Write bytes to the client's transport, as hypercorn does (same lock).

        Raises ConnectionError when the connection is gone.
        """
        server = self._servers.get(tuple(peer)) if peer else None
        if server is None:
            raise ConnectionError("connection closed")
        try:
            async with server.send_lock:
                # Shielded like hypercorn's own writes: a frame is never cut
                # in half by a cancellation.
                with trio.CancelScope(shield=True):
                    await server.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            # Busy: hypercorn is closing the stream (its send_eof takes no lock).
            raise ConnectionError("connection closed") from None


    def try_send(self, peer: Any, data: bytes) -> Partial | bool | None:
        """Write `data` now if the client's socket takes it without waiting.

        True: all written. False: nothing written (busy, not plain TCP, or the
        client has not drained what it got before). None: connection gone.
        A `Partial`: some written; the connection's send lock stays held
        until `finish(partial)` writes the rest, so nothing can come between.
        """
        server = self._servers.get(tuple(peer)) if peer else None
        if server is None:
            return None
        stream = server.stream
        if type(stream) is not trio.SocketStream:
            return False
        lock = server.send_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            return False
        try:
            fd = stream.socket.fileno()
            outq = fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0")
            if int.from_bytes(outq, "little", signed=True) > 0:
                lock.release()
                return False
            written = os.write(fd, data)
        except BlockingIOError:
            lock.release()
            return False
        except (OSError, ValueError):
            lock.release()
            return None
        if written == len(data):
            lock.release()
            return True
        return Partial(server, data[written:])

    async def finish(self, partial: Partial) -> None:
        """Write the rest of a partial send, then release the send lock."""
        try:
            with trio.CancelScope(shield=True):
                await partial.server.stream.send_all(partial.rest)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            raise ConnectionError("connection closed") from None
        finally:
            partial.server.send_lock.release()


@dataclass(frozen=True)
class Partial:
    """A frame the socket took only part of; its connection's send lock is held."""

    server: _TCPServer
    rest: bytes


def text_frame(text: str) -> bytes:
    """One unmasked, final WebSocket text frame (RFC 6455 5.2) carrying `text`."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 65536:
        header = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return header + payload


#: Connections accepted but not yet past their request line and headers.
#: A storm of handshakes is parsed a few dozen at a time, so the tasks that
#: serve connected clients (the tick's fan-out among them) keep their turn in
#: trio's scheduler instead of queueing behind thousands of parsers; the rest
#: wait in the kernel's backlog.
ADMITTING = 32
#: A connection holds its admission place at most this long: a client that
#: sends its request slowly (or never) must not keep others waiting.
ADMISSION_HOLD = 0.05

#: Releases the current connection's admission place (set per connection task).
_ADMITTED: contextvars.ContextVar[Callable[[], None]] = contextvars.ContextVar(
    "control_center_admitted", default=lambda: None)


def admitted() -> None:
    """Mark the current connection's request as parsed: the next one may be admitted."""
    _ADMITTED.get()()


class _TCPServer(TCPServer):
    """hypercorn's connection handler, registered while it lives."""

    def __init__(self, connections: Connections, *args: Any) -> None:
        super().__init__(*args)
        self._connections = connections
        # Same role as hypercorn's Lock, but a partial write started by the
        # fan-out's loop can be finished (and released) by the client's task.
        self.send_lock = trio.Semaphore(1)  # type: ignore[assignment]

    async def run(self) -> None:
        transport = getattr(self.stream, "transport_stream", self.stream)
        try:
            sock = transport.socket
            peer = parse_socket_addr(sock.family, sock.getpeername())
        except OSError:
            peer = None
        if peer is not None:
            self._connections.add(peer, self)
        try:
            await super().run()
        finally:
            if peer is not None:
                self._connections.remove(peer, self)


async def _accept_loop(listener: Any, handler: Callable[[Any], Any],
                       handlers: trio.Nursery) -> None:
    """trio.serve_listeners, with at most ADMITTING connections before their request."""
    places = trio.Semaphore(ADMITTING)
    while True:
        await places.acquire()
        try:
            stream = await listener.accept()
        except OSError as exc:
            places.release()
            if exc.errno not in _RESOURCE_ERRNOS:
                raise
            # Out of file descriptors or memory: what serve_listeners does.
            await trio.sleep(0.1)
            continue
        handlers.start_soon(_connection, handler, stream, places)


_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


async def _connection(handler: Callable[[Any], Any], stream: Any,
                      places: trio.Semaphore) -> None:
    held = True

    def release() -> None:
        nonlocal held
        if held:
            held = False
            places.release()

    _ADMITTED.set(release)  # this task's context: hypercorn's app tasks inherit it
    async with trio.open_nursery() as nursery:
        async def hold_at_most() -> None:
            await trio.sleep(ADMISSION_HOLD)
            release()

        nursery.start_soon(hold_at_most)
        try:
            await handler(stream).run()
        finally:
            release()
            nursery.cancel_scope.cancel()
            # As serve_listeners does: hypercorn's own close can be cancelled
            # half-way at shutdown, and the socket must not outlive the task.
            await trio.aclose_forcefully(stream)


def bind(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket on host:port; OSError naming [server] port if taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        # strerror is the reason alone (callers prefix where); the address is
        # the OSError's filename, so str(exc) names it too.
        if exc.errno == errno.EADDRINUSE:
            raise OSError(exc.errno, "address already in use (change [server] port in "
                                     "config.toml, or stop the program holding it)",
                          f"{host}:{port}") from None
        raise OSError(exc.errno, f"{exc.strerror} (check [server] host and port)",
                      f"{host}:{port}") from None
    sock.setblocking(False)
    return sock


async def serve_asgi(app: Any, config: HyperConfig, sock: socket.socket, *,
                     connections: Connections, compression: bool,
                     shutdown_trigger: Callable[[], Awaitable[None]]) -> None:
    """Serve `app` on the listening `sock` until `shutdown_trigger` returns.

    Then stop accepting, tell hypercorn's connections to finish and give
    them `config.graceful_timeout` before cancelling them.
    """
    COMPRESSION.set(compression)
    BOUNDED_MESSAGES.set(True)
    CLEAR_ERRORS.set(True)
    context = WorkerContext(None)
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    listener: Any = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    ssl_context = config.create_ssl_context()
    if ssl_context is not None:
        listener = trio.SSLListener(listener, ssl_context, https_compatible=True)
    handler = partial(_TCPServer, connections, wrapped, config, context, ConnectionState({}))
    async with trio.open_nursery() as handlers:
        async with trio.open_nursery() as accept:
            accept.start_soon(_accept_loop, listener, handler, handlers)
            await shutdown_trigger()
            accept.cancel_scope.cancel()
        await context.terminated.set()
        handlers.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
