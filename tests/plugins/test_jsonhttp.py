"""The shared JSON-over-HTTP module: server errors in the core's wording, the client."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from plugins.jsonhttp import (
    JSONClient,
    JSONHandler,
    Server,
    Unreachable,
    collect_routes,
    fetch_stats,
    request,
    route,
)


class Handler(JSONHandler):
    @route("GET", r"/n")
    def n(self) -> tuple[int, dict[str, Any]]:
        return 200, {"n": self.int_param("n", 5, 1, 100)}

    @route("POST", r"/echo")
    def echo(self) -> tuple[int, dict[str, Any]]:
        return 200, self.read_json()

    @route("GET", r"/stats")
    def stats(self) -> tuple[int, dict[str, Any]]:
        return 200, {"total": 3}


Handler.routes = collect_routes(Handler)


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def url(srv: Server) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


def test_errors_speak_the_core_wording(server: Server) -> None:
    client = JSONClient(url(server))
    try:
        assert client.call("GET", "/n?n=7") == (200, {"n": 7})
        assert client.call("GET", "/n?n=abc") == (
            400, {"error": "n: expected an integer, got 'abc'"})
        assert client.call("GET", "/n?n=0") == (
            400, {"error": "n: expected an integer from 1 to 100, got 0"})
        status, body = client.call("POST", "/echo", {"a": 1})
        assert (status, body) == (200, {"a": 1})
    finally:
        client.close()


def test_request_and_fetch_stats(server: Server) -> None:
    host, port = server.server_address[:2]
    assert request(host, port, "GET", "/stats") == (200, {"total": 3})
    assert fetch_stats(host, port, "thing") == ({"total": 3}, None)
    # A POST without a body still says Content-Length: 0, so the handler reads it.
    assert request(host, port, "POST", "/echo") == (
        400, {"error": "body: expected a JSON object, got null"})


def test_a_closed_port_is_unreachable_in_words() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Unreachable):
        request("127.0.0.1", port, "GET", "/stats", timeout=0.5)
    body, why = fetch_stats("127.0.0.1", port, "thing")
    assert body == {} and why is not None
    assert why.startswith(f"thing unreachable at 127.0.0.1:{port}: ")


def test_a_stale_keep_alive_connection_is_retried_once(server: Server) -> None:
    client = JSONClient(url(server))
    try:
        assert client.call("GET", "/stats")[0] == 200
        conn = client._local.conn
        assert conn.sock is not None
        conn.sock.shutdown(socket.SHUT_RDWR)  # as if the server had dropped it
        assert client.call("GET", "/stats") == (200, {"total": 3})
    finally:
        client.close()
