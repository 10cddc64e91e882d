"""A lean WebSocket watcher that records when each snapshot reached the client's kernel.

A load generator holding 1,000 trio-websocket clients in one Python process
spends tens of milliseconds per tick parsing frames; on a 2-core machine
shared with a connection storm it gets the CPU late, and the delay it adds
looks like the server's. This watcher asks the kernel instead: with
`SO_TIMESTAMP` every `recvmsg` carries the time the data arrived in the
socket's receive queue, however late the process reads it. Each snapshot
is recorded with that arrival time, the time this process read it, and the
snapshot's own `metrics.timestamp`.

The client side of RFC 6455 that a snapshot reader needs: the handshake,
unmasked server frames (text, close), no extensions. 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import struct
import time
from dataclasses import dataclass, field
from datetime import datetime

import trio

#: Linux: SO_TIMESTAMP and its control message SCM_TIMESTAMP (a struct timeval).
SO_TIMESTAMP = getattr(socket, "SO_TIMESTAMP", 29)
_TIMEVAL = struct.Struct("@ll")
_ANCILLARY = socket.CMSG_SPACE(_TIMEVAL.size)
_TIMESTAMP = re.compile(rb'"timestamp": "([^"]+)"')


@dataclass
class Arrival:
    kernel: float  # wall-clock time the frame's first bytes reached our socket
    read: float  # wall-clock time this process read them
    stamp: float  # the snapshot's metrics.timestamp


@dataclass
class Watcher:
    """One connection; `arrivals` grows by one per snapshot."""

    arrivals: list[Arrival] = field(default_factory=list)
    close_code: int | None = None


def _stamp(payload: bytes) -> float:
    found = _TIMESTAMP.search(payload)
    if found is None:
        return float("nan")
    return datetime.fromisoformat(found.group(1).decode().replace("Z", "+00:00")).timestamp()


def _kernel_time(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMP and len(data) >= _TIMEVAL.size:
            sec, usec = _TIMEVAL.unpack_from(data)
            return sec + usec / 1e6
    return None


async def watch(port: int, watcher: Watcher, connected: trio.Semaphore | None = None,
                path: str = "/ws") -> None:
    """Connect, then record every snapshot until cancelled or closed by the server."""
    sock = trio.socket.socket()
    with sock:
        await sock.connect(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        await sock.send(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = await sock.recv(65536)
            if not data:
                raise ConnectionError("closed during the handshake")
            buf += data
        head, _, buf = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"handshake refused: {head.splitlines()[0]!r}")
        if connected is not None:
            connected.release()
        first: tuple[float, float] | None = None  # (kernel, read) of the frame in buf
        now = time.time()
        if buf:
            first = (now, now)
        while True:
            data, ancillary, _flags, _addr = await sock.recvmsg(1 << 16, _ANCILLARY)
            if not data:
                return
            read = time.time()
            kernel = _kernel_time(ancillary) or read
            if not buf:
                first = (kernel, read)
            buf += data
            while (frame := _split(buf)) is not None:
                opcode, payload, buf = frame
                assert first is not None
                if opcode == 0x1:
                    watcher.arrivals.append(Arrival(first[0], first[1], _stamp(payload)))
                elif opcode == 0x8:
                    watcher.close_code = (struct.unpack("!H", payload[:2])[0]
                                          if len(payload) >= 2 else 1005)
                    return
                first = (kernel, read) if buf else None


def _split(buf: bytes) -> tuple[int, bytes, bytes] | None:
    """(opcode, payload, rest) of the first whole frame in `buf`, or None."""
    if len(buf) < 2:
        return None
    opcode, length, at = buf[0] & 0x0F, buf[1] & 0x7F, 2
    if length == 126:
        if len(buf) < 4:
            return None
        length, at = struct.unpack_from("!H", buf, 2)[0], 4
    elif length == 127:
        if len(buf) < 10:
            return None
        length, at = struct.unpack_from("!Q", buf, 2)[0], 10
    if buf[1] & 0x80:
        raise ConnectionError("a server frame must not be masked")
    if len(buf) < at + length:
        return None
    return opcode, buf[at:at + length], buf[at + length:]
