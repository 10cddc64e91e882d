"""A connection's request head: read (bounded in size and time), parsed, judged.

The accept loop reads the head itself to route the connection: a `/ws`
upgrade goes to trio-websocket, everything else to hypercorn with the head
replayed. wsproto, under trio-websocket, refuses some bad handshakes on its
own and then never hands the request over (and it upgrades a malformed
key), so `ws_problem` finds those from the parsed head first and they are
refused here, with the same JSON body as every other refusal.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import h11
import trio

#: A request head larger than this is refused (431): hypercorn's own parser
#: would take 16 KiB per event; this leaves room for large cookies.
MAX_HEAD = 64 * 1024
_END = b"\r\n\r\n"


class HeadError(Exception):
    """The head cannot be routed; answer `status` with `message` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Head:
    """The parts of a request head the router and the WebSocket checks use."""

    method: str
    target: str
    path: str
    query: str
    #: Lower-case names; repeated headers joined with ", " (RFC 9110 5.3).
    headers: dict[str, str]

    @property
    def is_websocket(self) -> bool:
        """An upgrade to WebSocket (whatever else is wrong with it)."""
        return "websocket" in self.headers.get("upgrade", "").lower()

    def query_value(self, name: str) -> str | None:
        values = parse_qs(self.query).get(name)
        return values[0] if values else None


async def read_head(stream: trio.abc.ReceiveStream) -> tuple[bytes, bytes] | None:
    """Read until the end of the request head: (head, what followed it).

    None when the client closed before sending a whole head. Raises
    HeadError past MAX_HEAD. The caller bounds the time.
    """
    data = bytearray()
    searched = 0
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        data += chunk
        end = data.find(_END, max(0, searched - 3))
        if end >= 0:
            end += len(_END)
            if end > MAX_HEAD:
                break
            return bytes(data[:end]), bytes(data[end:])
        if len(data) > MAX_HEAD:
            break
        searched = len(data)
    raise HeadError(431, f"request head larger than {MAX_HEAD} bytes")


def request_line(head: bytes) -> tuple[str, str]:
    """(method, target) of a head, without judging the rest of it."""
    first = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = first.split(" ")
    return (parts[0], parts[1]) if len(parts) == 3 else ("", "")


def parse_head(head: bytes) -> Head:
    """Parse a whole request head with h11; HeadError(400) when it is not HTTP/1.1."""
    conn = h11.Connection(h11.SERVER)
    try:
        conn.receive_data(head)
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise HeadError(400, f"malformed request: {exc}") from None
    if not isinstance(event, h11.Request):
        raise HeadError(400, "malformed request")
    headers: dict[str, str] = {}
    for name, value in event.headers:
        key, text = name.decode("latin-1"), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    target = event.target.decode("latin-1")
    split = urlsplit(target)
    return Head(method=event.method.decode("latin-1"), target=target, path=split.path,
                query=split.query, headers=headers)


def ws_problem(head: Head) -> tuple[int, str] | None:
    """Why a WebSocket handshake is refused, as (status, message); None when fine."""
    version = head.headers.get("sec-websocket-version")
    if version != "13":
        got = "none" if version is None else repr(version)
        return 426, f"unsupported Sec-WebSocket-Version {got}: this server speaks 13"
    key = head.headers.get("sec-websocket-key")
    if key is None:
        return 400, "missing Sec-WebSocket-Key"
    try:
        nonce = base64.b64decode(key, validate=True)
    except ValueError:
        nonce = b""
    if len(nonce) != 16:
        return 400, "Sec-WebSocket-Key must be 16 random bytes in base64 (RFC 6455 4.1)"
    connection = {t.strip().lower() for t in head.headers.get("connection", "").split(",")}
    if head.method != "GET" or not head.is_websocket or "upgrade" not in connection:
        return 400, ("not a WebSocket upgrade (HTTP/1.1 GET with Connection: Upgrade "
                     "and Upgrade: websocket)")
    return None


def error_body(message: str) -> bytes:
    """The JSON body of every refusal on port 9000."""
    return json.dumps({"success": False, "error": message}).encode()


def error_response(status: int, message: str,
                   extra_headers: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """A whole HTTP/1.1 refusal with the JSON body; the connection closes after it."""
    body = error_body(message)
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    lines = [f"HTTP/1.1 {status} {phrase}".encode(),
             b"content-type: application/json",
             b"content-length: " + str(len(body)).encode(),
             b"connection: close"]
    lines += [name + b": " + value for name, value in extra_headers or []]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def without_h2c_upgrade(head: bytes) -> bytes:
    """The head without an `Upgrade: h2c` offer: port 9000 speaks HTTP/1.1 only.

    A server may ignore an upgrade offer (RFC 9110 7.8); hypercorn would
    accept it, and HTTP/2's control frames are not bounded here.
    """
    lines = head.split(b"\r\n")
    kept = [line for line in lines
            if not (line.lower().startswith(b"upgrade:") and b"h2c" in line.lower())
            and not line.lower().startswith(b"http2-settings:")]
    return b"\r\n".join(kept) if len(kept) != len(lines) else head
