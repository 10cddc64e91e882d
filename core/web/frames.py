"""WebSocket frames at the byte level: the server's pre-encoded frames, and a
meter over what a client sends.

trio-websocket (through wsproto) parses and answers the client's frames; it
offers no hook per frame, so a client could send pings, pongs or empty
fragments as fast as it likes, and its message limit counts characters.
`FrameMeter` reads only the frame headers of the same bytes on their way to
trio-websocket (2 to 14 bytes a frame, payloads are skipped, nothing is
buffered beyond one header) and says when a client is past a limit: every
frame counts against the rate, data frames against the message size, in
bytes. After our own close frame it also tells when the client's answer
has arrived.
"""

from __future__ import annotations

import trio

#: Close codes (RFC 6455 section 7.4.1).
NORMAL, GOING_AWAY, PROTOCOL_ERROR, INVALID_DATA, POLICY, TOO_BIG, INTERNAL, TRY_AGAIN_LATER = (
    1000, 1001, 1002, 1007, 1008, 1009, 1011, 1013)

_CLOSE, _CONTINUATION, _TEXT, _BINARY = 0x8, 0x0, 0x1, 0x2


def _header(opcode: int, n: int) -> bytes:
    first = 0x80 | opcode  # FIN
    if n < 126:
        return bytes((first, n))
    if n < 65536:
        return bytes((first, 126)) + n.to_bytes(2, "big")
    return bytes((first, 127)) + n.to_bytes(8, "big")


def text_frame(text: str) -> bytes:
    """One unmasked, final WebSocket text frame (RFC 6455 5.2) carrying `text`."""
    payload = text.encode()
    return _header(_TEXT, len(payload)) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """An unmasked close frame; the reason is cut to fit a control frame (125 bytes)."""
    payload = code.to_bytes(2, "big") + reason.encode()[:123]
    return _header(_CLOSE, len(payload)) + payload


def is_close_frame(data: bytes) -> bool:
    """True when `data` starts with a (final) close frame: what wsproto writes to close."""
    return data[:1] == b"\x88"


class Bucket:
    """One client's token bucket: `rate` a second, bursts of one second's worth."""

    __slots__ = ("_last", "_tokens", "rate")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self._tokens = max(1.0, rate)
        self._last = now

    def take(self, now: float) -> bool:
        self._tokens = min(max(1.0, self.rate), self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class FrameMeter:
    """Counts a client's frames as its bytes arrive; `verdict` once it is past a limit.

    `bucket` takes one token per frame (the rate limit); `max_message`
    bounds the bytes of one data message, fragments included. The verdict is
    (close code, reason); once set, the client's bytes are no longer read as
    messages, only scanned for its close frame (`close_seen`).
    """

    __slots__ = ("_bucket", "_header", "_message", "_rate_text", "_skip", "close_seen",
                 "max_message", "verdict")

    def __init__(self, max_message: int, bucket: Bucket,
                 rate_text: str) -> None:
        self.max_message = max_message
        self._bucket = bucket
        self._rate_text = rate_text
        self._header = b""  # a frame header not complete yet
        self._skip = 0  # payload bytes of the current frame still to come
        self._message = 0  # bytes of the data message in progress
        self.verdict: tuple[int, str] | None = None
        self.close_seen = False

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Scan `data`, the next bytes the client sent after its handshake."""
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            if self._skip:
                taken = min(self._skip, end - pos)
                self._skip -= taken
                pos += taken
                continue
            need = self._header_size(self._header, view[pos:end])
            have = len(self._header)
            if need is None or end - pos < need - have:
                self._header += bytes(view[pos:end])
                return
            header = self._header + bytes(view[pos:pos + need - have])
            pos += need - have
            self._header = b""
            self._frame(header)

    @staticmethod
    def _header_size(buffered: bytes, more: memoryview) -> int | None:
        """Bytes of the header that starts with `buffered` + `more`; None if unknown yet."""
        if len(buffered) >= 2:
            second = buffered[1]
        elif len(buffered) + len(more) >= 2:
            second = (buffered + bytes(more[:2 - len(buffered)]))[1]
        else:
            return None
        size = 2 + (4 if second & 0x80 else 0)
        length = second & 0x7F
        return size + (2 if length == 126 else 8 if length == 127 else 0)

    def _frame(self, header: bytes) -> None:
        first, second = header[0], header[1]
        opcode, fin = first & 0x0F, bool(first & 0x80)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(header[2:4], "big")
        elif length == 127:
            length = int.from_bytes(header[2:10], "big")
        self._skip = length
        if opcode == _CLOSE:
            self.close_seen = True
        if self.verdict is not None:
            return  # only looking for the close frame now
        if not self._bucket.take(trio.current_time()):
            self.verdict = (POLICY, f"more than {self._rate_text} frames/s")
            return
        if opcode in (_TEXT, _BINARY, _CONTINUATION):
            self._message += length
            if self._message > self.max_message:
                self.verdict = (TOO_BIG, f"message larger than {self.max_message} bytes")
            elif fin:
                self._message = 0
