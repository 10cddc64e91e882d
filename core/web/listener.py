"""Port 9000's accept loop: admission, TLS, the request head, and the route.

Each connection's request head is read here (bounded in size and time),
then the connection goes one of two ways:
- `GET /ws` -> trio-websocket's server side (`wrap_server_stream` over a
  `ClientConn` that hands back the head first), then the fan-out;
- everything else -> hypercorn's per-connection `TCPServer` over a stream
  that replays the head, exactly as hypercorn's own trio worker drives it,
  with the Starlette app behind.

`hypercorn.trio.serve` would hide the bound socket (port 0, a clear error
when the port is taken), each connection's transport (the fan-out's direct
writes, the cut of a client that stopped reading) and the shutdown order
(our 1001 close frames first); trio-websocket's server alone answers every
non-upgrade request with a bare 400. Hence this loop.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
import trio_websocket
from hypercorn.config import Config as HyperConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app

from core.web.conn import ClientConn, Replay, TLSReplay
from core.web.frames import INVALID_DATA, PROTOCOL_ERROR
from core.web.gate import ADMISSION_HOLD, Gate
from core.web.head import (
    HeadError,
    error_body,
    error_response,
    parse_head,
    read_head,
    request_line,
    without_h2c_upgrade,
    ws_problem,
)
from core.web.ws import Fanout

log = logging.getLogger(__name__)

#: Seconds for a whole request head after its first byte (hypercorn's
#: keep-alive timeout is 5 s too).
HEAD_TIMEOUT = 5.0
#: Seconds for the TLS handshake, and for trio-websocket to take the head.
HANDSHAKE_TIMEOUT = 5.0

_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


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


class Listener:
    """Accepts on one socket and routes each connection by its request head."""

    def __init__(self, app: Any, config: HyperConfig, fanout: Fanout, gate: Gate) -> None:
        self.config = config
        self.fanout = fanout
        self.gate = gate
        self.app = wrap_app(app, config.wsgi_max_body_size, "asgi")
        self.context = WorkerContext(None)
        self.ssl_context: ssl.SSLContext | None = config.create_ssl_context()

    async def serve(self, sock: socket.socket, *,
                    shutdown_trigger: Callable[[], Awaitable[None]]) -> None:
        """Serve on the listening `sock` until `shutdown_trigger` returns.

        Then stop accepting (the socket is closed: new connections are
        refused), tell hypercorn's connections to finish and give them
        `config.graceful_timeout` before cancelling them.
        """
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        async with trio.open_nursery() as handlers:
            async with trio.open_nursery() as accept:
                accept.start_soon(self._accept_loop, listener, handlers)
                await shutdown_trigger()
                accept.cancel_scope.cancel()
            # Refuse new connections at once: left in the backlog they would
            # wait for the graceful period, then be reset.
            await listener.aclose()
            await self.context.terminated.set()
            handlers.cancel_scope.deadline = trio.current_time() + self.config.graceful_timeout

    async def _accept_loop(self, listener: trio.SocketListener, handlers: trio.Nursery) -> None:
        """trio.serve_listeners, with the gate's caps: past them, closed unread."""
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRNOS:
                    raise
                # Out of file descriptors or memory: what serve_listeners does.
                log.warning("accepting connections: %s; retrying in 0.1 s", exc.strerror)
                await trio.sleep(0.1)
                continue
            address = _address(stream)
            if self.gate.enter(address) is not None:
                stream.socket.close()  # nothing read, nothing answered: it costs no more
                continue
            handlers.start_soon(self._connection, stream, address, handlers)

    async def _connection(self, stream: trio.SocketStream, address: str,
                          handlers: trio.Nursery) -> None:
        try:
            # Silent connections hold a descriptor, not a turn: wait for the
            # first byte before asking for a place.
            with trio.move_on_after(self.gate.first_byte_timeout()) as waiting:
                await trio.lowlevel.wait_readable(stream.socket)
            if waiting.cancelled_caught:
                return
            await self.gate.places.acquire()
            release = _Place(self.gate.places)
            handlers.start_soon(release.after, ADMISSION_HOLD)
            try:
                await self._route(stream, release)
            finally:
                release()
        except _GONE:
            pass
        except Exception:  # one connection's trouble never reaches the server
            log.exception("connection from %s: internal error", address)
        finally:
            self.gate.leave(address)
            # As serve_listeners does: a close can be cancelled half-way
            # at shutdown, and the socket must not outlive the task.
            await trio.aclose_forcefully(stream)

    async def _route(self, tcp: trio.SocketStream, release: Callable[[], None]) -> None:
        stream: trio.abc.Stream = tcp
        if self.ssl_context is not None:
            stream = trio.SSLStream(tcp, self.ssl_context, server_side=True,
                                    https_compatible=True)
            try:
                with trio.fail_after(HANDSHAKE_TIMEOUT):
                    await stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError):
                return  # not TLS, or too slow: nothing to answer
        got: tuple[bytes, bytes] | None = None
        with trio.move_on_after(HEAD_TIMEOUT) as timer:
            try:
                got = await read_head(stream)
            except HeadError as exc:
                await _refuse(stream, exc.status, exc.message)
                return
        if timer.cancelled_caught:
            await _refuse(stream, 408, f"request head not complete within {HEAD_TIMEOUT:g} s")
            return
        if got is None:
            return
        head, rest = got
        method, target = request_line(head)
        if method == "PRI":  # the HTTP/2 connection preface
            await _refuse(stream, 505, "this port speaks HTTP/1.1 only")
            return
        if method == "GET" and target.split("?", 1)[0] == "/ws":
            await self._websocket(stream, head, rest, release)
            return
        release()
        replay: trio.abc.Stream
        if isinstance(stream, trio.SSLStream):
            replay = TLSReplay(stream, without_h2c_upgrade(head) + rest)
        else:
            replay = Replay(tcp, without_h2c_upgrade(head) + rest)
        await TCPServer(self.app, self.config, self.context, ConnectionState({}),
                        replay).run()  # type: ignore[arg-type]

    async def _websocket(self, stream: trio.abc.Stream, head: bytes, rest: bytes,
                         release: Callable[[], None]) -> None:
        try:
            parsed = parse_head(head)
        except HeadError as exc:
            await _refuse(stream, exc.status, exc.message)
            return
        problem = ws_problem(parsed)
        if problem is not None:
            status, message = problem
            extra = [(b"sec-websocket-version", b"13")] if status == 426 else []  # RFC 6455 4.4
            await _refuse(stream, status, message, extra)
            return
        conn = ClientConn(stream, head, rest, self.fanout.meter())
        refusal = self.fanout.refusal(parsed, str(conn.peer[0]) if conn.peer else "?")
        async with trio.open_nursery() as nursery:
            request = None
            with trio.move_on_after(HANDSHAKE_TIMEOUT):
                request = await trio_websocket.wrap_server_stream(
                    nursery, conn, max_message_size=self.fanout.server.max_message_bytes)
            try:
                if request is None:
                    return
                if refusal is not None:
                    status, message = refusal
                    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
                    if status == 429:
                        headers.append((b"retry-after", b"5"))
                    await request.reject(status, extra_headers=headers, body=error_body(message))
                    return
                ws = await request.accept()
                conn.farewell = partial(_protocol_error, ws)
                release()
                del parsed, head, rest  # not needed for the connection's life
                await self.fanout.serve(ws, conn, nursery)
            except (*_GONE, trio_websocket.ConnectionClosed):
                pass
            finally:
                nursery.cancel_scope.cancel()
                await conn.aclose()


class _Place:
    """A connection's parsing place, given back once (when its head is read, or later)."""

    __slots__ = ("_places",)

    def __init__(self, places: trio.Semaphore) -> None:
        self._places: trio.Semaphore | None = places

    def __call__(self) -> None:
        if self._places is not None:
            self._places.release()
            self._places = None

    async def after(self, seconds: float) -> None:
        """Give the place back after `seconds` at most, however slow the client is."""
        await trio.sleep(seconds)
        self()


def _address(stream: trio.SocketStream) -> str:
    """The client's address, without its port ("?" when the socket is already gone)."""
    try:
        return str(stream.socket.getpeername()[0])
    except (OSError, IndexError):
        return "?"


def _protocol_error(ws: trio_websocket.WebSocketConnection) -> tuple[int, str] | None:
    """The close code wsproto found for frames that break the protocol, if that is why."""
    closed = ws.closed
    if closed is not None and closed.code in (PROTOCOL_ERROR, INVALID_DATA):
        return closed.code, (closed.reason or "")[:120]
    return None


async def _refuse(stream: trio.abc.Stream, status: int, message: str,
                  extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer a request we will not route, with the JSON body, then close."""
    with trio.move_on_after(HANDSHAKE_TIMEOUT):
        try:
            await stream.send_all(error_response(status, message, extra))
        except _GONE:
            pass
