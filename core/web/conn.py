"""The streams of port 9000: what a connection's bytes go through after our
accept loop has read its request head.

`ClientConn` is one WebSocket client's transport and the only place bytes
reach its socket: trio-websocket writes through it (handshake answer,
pongs, error replies, close frames) and so does the fan-out (the tick's
pre-encoded frame, with one non-blocking write where the socket takes it,
the rest of a partial write finished by the client's own task). So the
send lock, the time a send has been blocked (the watchdog cuts it) and
the cut itself live here alone.

`Replay` hands hypercorn a connection whose head we already read: it gives
back those bytes first, then reads the socket. hypercorn's `TCPServer`
takes any trio stream; it looks for `do_handshake` to tell TLS from plain
TCP, so the TLS flavour (`TLSReplay`) has it and the plain one has not.
"""

from __future__ import annotations

import fcntl
import os
import termios
from collections.abc import Callable
from typing import Any

import trio

from core.web.frames import FrameMeter, close_frame, is_close_frame

_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)
#: Seconds a last close frame may take to leave before the socket closes anyway.
FAREWELL_WAIT = 1.0


def tcp_socket(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The TCP socket under a plain or TLS stream; None for anything else."""
    inner = getattr(stream, "transport_stream", stream)
    return getattr(inner, "socket", None)


def unsent_bytes(sock: trio.socket.SocketType | None) -> int:
    """Bytes queued in the kernel for the peer and not yet taken by it (0 if unknown)."""
    if sock is None:
        return 0
    try:
        buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):
        return 0
    return int.from_bytes(buf, "little", signed=True)


class _Replaying(trio.abc.Stream):
    """A stream that first returns bytes already read from it, then reads on."""

    def __init__(self, stream: trio.abc.Stream, buffered: bytes) -> None:
        self._stream = stream
        self._buffered = buffered

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._buffered:
            n = len(self._buffered) if max_bytes is None else max_bytes
            data, self._buffered = self._buffered[:n], self._buffered[n:]
            await trio.lowlevel.checkpoint()
            return data
        return bytes(await self._stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


class Replay(_Replaying, trio.abc.HalfCloseableStream):
    """Plain TCP, replaying the head: hypercorn finds `socket` and no `do_handshake`."""

    def __init__(self, stream: trio.SocketStream, buffered: bytes) -> None:
        super().__init__(stream, buffered)
        self._tcp = stream
        self.socket = stream.socket

    async def send_eof(self) -> None:
        await self._tcp.send_eof()


class TLSReplay(_Replaying):
    """TLS (handshake done), replaying the head: hypercorn finds `do_handshake`."""

    def __init__(self, stream: trio.SSLStream[Any], buffered: bytes) -> None:
        super().__init__(stream, buffered)
        self._tls = stream
        self.transport_stream = stream.transport_stream

    async def do_handshake(self) -> None:
        await self._tls.do_handshake()  # done already: returns at once

    def selected_alpn_protocol(self) -> str | None:
        return self._tls.selected_alpn_protocol()


class ClientConn(trio.abc.Stream):
    """One WebSocket client's transport: every byte to its socket goes through here.

    `head` is the request head we read (handed to trio-websocket first),
    `early` what followed it in the same reads (frames, metered like the rest).
    """

    __slots__ = ("_busy", "_head_left", "_pending", "_rest", "_stream", "_waiters",
                 "close_sent", "cut",
                 "farewell", "meter", "peer", "plain", "send_started", "socket")

    def __init__(self, stream: trio.abc.Stream, head: bytes, early: bytes,
                 meter: FrameMeter) -> None:
        self._stream = stream
        self._pending = head + early
        self._head_left = len(head)
        self.meter = meter
        self.socket = tcp_socket(stream)
        #: Plain TCP: the fan-out may write to the socket itself, without waiting.
        self.plain = type(stream) is trio.SocketStream
        try:
            self.peer: Any = self.socket.getpeername() if self.socket else None
        except OSError:
            self.peer = None
        # A Semaphore, not a Lock: a partial write begun by the fan-out's
        # task is finished (and released) by the client's own task.
        # Not a trio.Semaphore (hundreds of bytes a client at 10,000 clients):
        # a flag, and a parking lot made only when a sender has to wait.
        self._busy = False
        self._waiters: trio.lowlevel.ParkingLot | None = None
        self._rest = b""  # the unwritten end of a partial write; the lock is held
        #: trio time when the send in flight began; None when idle.
        self.send_started: float | None = None
        #: A close frame went out: no data frame may follow.
        self.close_sent = False
        self.cut = False
        #: Asked when the stream is closed before any close frame went out:
        #: the (code, reason) to send first, if any. trio-websocket drops a
        #: connection whose frames break the protocol without saying why;
        #: RFC 6455 7.1.7 wants a close frame (1002, 1007) first.
        self.farewell: Callable[[], tuple[int, str] | None] | None = None

    # -- what the client sent -------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """The client's bytes for trio-websocket; EOF once the meter has a verdict."""
        if self._pending:
            n = len(self._pending) if max_bytes is None else max_bytes
            data, self._pending = self._pending[:n], self._pending[n:]
            head = min(self._head_left, len(data))
            self._head_left -= head
            if head < len(data):
                self.meter.feed(memoryview(data)[head:])
            await trio.lowlevel.checkpoint()
        else:
            data = bytes(await self._stream.receive_some(max_bytes))
            self.meter.feed(data)
        if self.meter.verdict is not None:
            # Past a limit: trio-websocket sees the end of the stream, the
            # rest is read by drain_until_close and never buffered.
            return b""
        return data

    async def drain_until_close(self, timeout: float) -> None:
        """Read and drop what the client sends until its close frame (bounded)."""
        with trio.move_on_after(timeout):
            while not self.meter.close_seen:
                data = await self._stream.receive_some(65536)
                if not data:
                    return
                self.meter.feed(data)

    # -- to the client --------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write `data` whole, after any write in progress (shielded: never half a frame)."""
        await self._acquire()
        try:
            await self._write(bytes(data))
        finally:
            self._release()

    async def _write(self, data: bytes) -> None:
        if self.close_sent:
            if is_close_frame(data):
                return  # one close frame is enough (ours, then the library's)
            raise trio.ClosedResourceError("close frame already sent")
        self.send_started = trio.current_time()
        try:
            with trio.CancelScope(shield=True):
                await self._stream.send_all(data)
        except _GONE as exc:
            raise trio.BrokenResourceError("connection closed") from exc
        finally:
            self.send_started = None
        if is_close_frame(data):
            self.close_sent = True

    def try_send(self, frame: bytes) -> bool | None:
        """Write a data frame now if the socket takes it without waiting.

        True: written (in whole, or in part with the rest left for
        `finish()`, the lock held until then). False: nothing written (a
        send in progress, TLS, or the client has not drained what it got
        before). None: the connection is gone or closing.
        """
        if self.close_sent or self.cut:
            return None
        if not self.plain or self.socket is None:
            return False
        try:
            self._acquire_nowait()
        except trio.WouldBlock:
            return False
        try:
            fd = self.socket.fileno()
            if unsent_bytes(self.socket) > 0:
                self._release()
                return False
            written = os.write(fd, frame)
        except BlockingIOError:
            self._release()
            return False
        except (OSError, ValueError):
            self._release()
            return None
        if written == len(frame):
            self._release()
        else:
            self._rest = frame[written:]
        return True

    async def _acquire(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        while self._busy:
            if self._waiters is None:
                self._waiters = trio.lowlevel.ParkingLot()
            await self._waiters.park()
        self._busy = True

    def _acquire_nowait(self) -> None:
        if self._busy:
            raise trio.WouldBlock
        self._busy = True

    def _release(self) -> None:
        self._busy = False
        if self._waiters is not None and self._waiters:
            self._waiters.unpark()

    @property
    def partial(self) -> bool:
        """A frame went out in part; `finish()` must write the rest before anything else."""
        return bool(self._rest)

    async def finish(self) -> None:
        """Write the rest of a partial frame, then release the send lock."""
        rest, self._rest = self._rest, b""
        try:
            await self._write(rest)
        finally:
            self._release()

    def unsent(self) -> int:
        """Bytes the kernel still holds for this client (0 when unknown)."""
        return unsent_bytes(self.socket)

    def abort(self) -> None:
        """Close the socket now: a send blocked on it fails at once."""
        self.cut = True
        if self.socket is not None:
            self.socket.close()  # trio wakes a blocked sender with ClosedResourceError

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        if self._rest:  # half a frame is out: nothing may follow on this socket
            self._rest = b""
            self._release()
            self.abort()
        elif not (self.close_sent or self.cut) and self.farewell is not None:
            last = self.farewell()
            if last is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(FAREWELL_WAIT):
                    try:
                        await self.send_all(close_frame(*last))
                    except trio.BrokenResourceError:
                        pass
        await trio.aclose_forcefully(self._stream)
