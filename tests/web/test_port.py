"""Port 9000's router: what goes to trio-websocket, what to hypercorn, what is refused."""

from __future__ import annotations

import importlib
import json
import pkgutil
import socket

import pytest
import trio

from core.web import security

from .conftest import sleeper, web_server
from .test_ws import SEED_KEY

pytestmark = pytest.mark.anyio

UPGRADE = ("GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
           "{extra}\r\n")


def exchange(port: int, data: bytes, *, until_close: bool = True) -> bytes:
    """Send raw bytes; what came back until the server closed (or 3 s of quiet)."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(data)
        got = b""
        try:
            while chunk := sock.recv(65536):
                got += chunk
                if not until_close and b"\r\n\r\n" in got:
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return got


def responses(data: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each HTTP/1.1 response in `data` (Content-Length bodies)."""
    out = []
    while data.startswith(b"HTTP/1.1 "):
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        n = int(headers.get("content-length", "0"))
        out.append((int(lines[0].split()[1]), rest[:n]))
        data = rest[n:]
    return out


def test_no_dependency_module_is_patched():
    # The web layer uses hypercorn and trio-websocket through their public
    # API only: importing it replaces nothing in their modules.
    import hypercorn.protocol.h11 as h11_protocol
    import hypercorn.protocol.ws_stream as ws_stream
    import trio_websocket

    import core.web

    for module in pkgutil.iter_modules(core.web.__path__, "core.web."):
        importlib.import_module(module.name)
    assert h11_protocol.WSStream is ws_stream.WSStream
    assert ws_stream.WSStream.__module__ == "hypercorn.protocol.ws_stream"
    assert trio_websocket.WebSocketConnection.__module__ == "trio_websocket._impl"
    assert ws_stream.Handshake.__module__ == "hypercorn.protocol.ws_stream"


async def test_upgrade_as_second_request_of_a_keep_alive_connection_is_a_clear_400(tmp_path):
    async with web_server(tmp_path, sleeper("a")) as srv:
        data = (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                + UPGRADE.format(key=SEED_KEY, extra="").encode())
        with trio.fail_after(10):
            got = await trio.to_thread.run_sync(exchange, srv.port, data)
    (first, _), (second, body) = responses(got)[:2]
    assert first == 200
    assert second == 400
    assert "first request of its connection" in json.loads(body)["error"]
    assert b" 101 " not in got


async def test_http2_is_not_served(tmp_path):
    async with web_server(tmp_path, sleeper("a")) as srv:
        preface = await trio.to_thread.run_sync(
            exchange, srv.port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        h2c = await trio.to_thread.run_sync(
            exchange, srv.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Connection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
    [(status, body)] = responses(preface)
    assert status == 505 and "HTTP/1.1 only" in json.loads(body)["error"]
    # The h2c offer is ignored (RFC 9110 7.8): a plain HTTP/1.1 answer, no 101.
    assert responses(h2c)[0][0] == 200
    assert b" 101 " not in h2c


async def test_token_in_a_cookie_opens_the_stream(tmp_path):
    async with web_server(tmp_path, sleeper("a"), server='token = "s3cret-token-0123"') as srv:
        cookie = f"Cookie: theme=dark; {security.TOKEN_COOKIE}=s3cret-token-0123\r\n"
        ok = await trio.to_thread.run_sync(partial_exchange, srv.port, cookie)
        wrong = await trio.to_thread.run_sync(
            partial_exchange, srv.port, f"Cookie: {security.TOKEN_COOKIE}=nope\r\n")
    assert ok.startswith(b"HTTP/1.1 101")
    assert wrong.startswith(b"HTTP/1.1 401")


def partial_exchange(port: int, extra: str) -> bytes:
    return exchange(port, UPGRADE.format(key=SEED_KEY, extra=extra).encode(), until_close=False)


async def test_head_larger_than_the_limit_is_431_json(tmp_path):
    async with web_server(tmp_path, sleeper("a")) as srv:
        data = (UPGRADE.format(key=SEED_KEY, extra="X-Big: " + "a" * 70_000 + "\r\n")).encode()
        got = await trio.to_thread.run_sync(exchange, srv.port, data)
    [(status, body)] = responses(got)
    assert status == 431 and "request head larger" in json.loads(body)["error"]
