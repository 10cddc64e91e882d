"""Built-in health checks against real servers on 127.0.0.1."""

from __future__ import annotations

import functools
import socket
from collections.abc import Awaitable, Callable

import pytest
import trio

from core import health
from core.model import Probe
from core.runner import Runner

pytestmark = pytest.mark.anyio


async def serve(nursery: trio.Nursery, answer: Callable[[trio.SocketStream], Awaitable[None]]
                ) -> int:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, answer, 0,
                                                      host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


def http_answer(status: str) -> Callable[[trio.SocketStream], Awaitable[None]]:
    async def answer(stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some(4096)
        assert request.startswith(b"GET /health?deep=1 HTTP/1.1\r\n")
        await stream.send_all(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n".encode())
    return answer


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_http_2xx_is_healthy_and_anything_else_says_why() -> None:
    async with trio.open_nursery() as n:
        ok = await serve(n, http_answer("204 No Content"))
        bad = await serve(n, http_answer("503 Service Unavailable"))
        url = f"http://127.0.0.1:{ok}/health?deep=1"
        assert await health.check(url) == Probe(healthy=True)
        url = f"http://127.0.0.1:{bad}/health?deep=1"
        assert await health.check(url) == Probe(healthy=False,
                                                error=f"health check {url} answered 503")
        n.cancel_scope.cancel()


async def test_tcp_connect_is_healthy_and_a_refusal_is_not() -> None:
    async def hang_up(stream: trio.SocketStream) -> None:
        await stream.aclose()

    async with trio.open_nursery() as n:
        port = await serve(n, hang_up)
        assert await health.check(f"tcp://127.0.0.1:{port}") == Probe(healthy=True)
        closed = closed_port()
        result = await health.check(f"tcp://127.0.0.1:{closed}")
        assert not result.healthy and f"cannot connect to 127.0.0.1:{closed}" in str(result.error)
        url = f"http://127.0.0.1:{closed}/"
        result = await health.check(url)
        assert not result.healthy and str(result.error).startswith(f"health check {url} failed")
        n.cancel_scope.cancel()


async def test_an_answer_that_is_not_http_is_unhealthy() -> None:
    async def garbage(stream: trio.SocketStream) -> None:
        await stream.send_all(b"SSH-2.0-OpenSSH\r\n")

    async with trio.open_nursery() as n:
        port = await serve(n, garbage)
        url = f"http://127.0.0.1:{port}/"
        assert await health.check(url) == Probe(
            healthy=False, error=f"health check {url} failed: not an HTTP answer")
        n.cancel_scope.cancel()


async def test_a_server_that_never_answers_is_cut_off_at_the_timeout() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as n:
        port = await serve(n, silent)
        url = f"http://127.0.0.1:{port}/"
        with trio.fail_after(5):
            result = await Runner._builtin_check(url, 0.2)
        assert result == Probe(healthy=False,
                               error=f"health check {url} did not answer within 0.2 s")
        n.cancel_scope.cancel()


@pytest.mark.parametrize("bad", ["ftp://x/", "tcp://127.0.0.1", "http:///path", "nonsense"])
def test_a_malformed_check_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=r"expected|needs a port"):
        health.parse(bad)
