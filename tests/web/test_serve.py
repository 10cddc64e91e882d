"""core.web.serve itself: binding errors, shutdown, the per-message path."""

from __future__ import annotations

import json
import socket
from functools import partial

import pytest
import trio

from core.config import ServerConfig
from core.hub import Hub
from core.web import serve

from .conftest import close_transport, ws_client

pytestmark = pytest.mark.anyio


async def test_port_taken_is_a_clear_oserror():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        hub = Hub(interval=1.0, history_seconds=60)
        with pytest.raises(OSError) as refused:
            await serve(None, hub, ServerConfig(port=port), shutdown=trio.Event())
    assert f"127.0.0.1:{port}" in str(refused.value)
    assert "[server] port" in str(refused.value)
    assert refused.value.strerror.startswith("address already in use")


async def test_shutdown_returns_promptly_and_frees_the_port(tmp_path):
    hub = Hub(interval=0.2, history_seconds=60)
    hub.publish({"components": {}, "metrics": {}})
    shutdown = trio.Event()
    server = ServerConfig(port=0, interval=0.2)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve, None, hub, server, shutdown=shutdown))
        async with ws_client(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.get_message()
            t0 = trio.current_time()
            shutdown.set()
            with trio.fail_after(5):
                while ws.closed is None:
                    try:
                        await ws.get_message()
                    except Exception:
                        break
            await close_transport(ws)
    assert trio.current_time() - t0 < 3
    assert ws.closed.code == 1001
    with socket.socket() as again:  # the listening socket is closed
        # SO_REUSEADDR: the server closed the TCP connection first (RFC 6455
        # 7.1.1), so its side waits in TIME_WAIT; only a listener would refuse.
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()


async def test_shutdown_is_bounded_with_a_client_blocking_a_send(tmp_path):
    # A client that reads nothing (a raw socket, tiny receive buffer) while
    # big snapshots fill the path: the send to it blocks, shielded inside
    # hypercorn. Shutdown must not wait for it: its socket is cut.
    hub = Hub(interval=10.0, history_seconds=60)  # the watchdog stays out of it
    big = {"components": {"x": {"name": "y" * 1_000_000}}, "metrics": {}}
    hub.publish(big)
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve, None, hub, ServerConfig(port=0, interval=10.0),
                                           shutdown=shutdown))
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", port))
        await sock.send(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        for _ in range(12):
            hub.publish(big)
            await trio.sleep(0.05)
        t0 = trio.current_time()
        shutdown.set()
    elapsed = trio.current_time() - t0
    sock.close()
    # The close frame waits CLOSE_WAIT (1 s) behind the blocked send, then the
    # socket is cut (or close_all's 2 s grace ends it): bounded, not forever.
    assert 0.9 < elapsed < 6


async def test_after_fanout_runs_once_each_tick_is_out():
    # The paced garbage collector runs here: after the frames went out, not
    # before. When it is called, each client's socket already holds the tick.
    hub = Hub(interval=10.0, history_seconds=60)
    hub.publish({"components": {}, "metrics": {"tick": 0}})
    shutdown = trio.Event()
    peeked: list[tuple[int, bytes]] = []
    client_sock: list[socket.socket] = []

    def after_fanout() -> None:
        data = b""
        if client_sock:
            try:
                data = client_sock[0].recv(1 << 16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
        peeked.append((hub.latest.seq, data))

    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve, None, hub, ServerConfig(port=0, interval=10.0),
                                           shutdown=shutdown, after_fanout=after_fanout))
        async with ws_client(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.get_message()
            # A second handle on the client's socket, to look without reading.
            client_sock.append(socket.fromfd(ws._stream.socket.fileno(), socket.AF_INET,
                                             socket.SOCK_STREAM))
            try:
                for tick in (1, 2, 3):
                    hub.publish({"components": {}, "metrics": {"tick": tick}})
                    doc = json.loads(await ws.get_message())
                    assert doc["metrics"]["tick"] == tick
            finally:
                client_sock.pop().close()
        shutdown.set()
    after_connect = [(seq, data) for seq, data in peeked if seq >= 2]
    assert [seq for seq, _ in after_connect] == [2, 3, 4]
    for (seq, data), tick in zip(after_connect, (1, 2, 3), strict=True):
        assert f'"tick": {tick}'.encode() in data, (seq, data[:80])


async def test_after_fanout_that_raises_does_not_stop_the_stream():
    hub = Hub(interval=10.0, history_seconds=60)
    hub.publish({"components": {}, "metrics": {"tick": 0}})
    shutdown = trio.Event()

    def after_fanout() -> None:
        raise RuntimeError("collector trouble")

    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve, None, hub, ServerConfig(port=0, interval=10.0),
                                           shutdown=shutdown, after_fanout=after_fanout))
        async with ws_client(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.get_message()
            for tick in (1, 2):
                hub.publish({"components": {}, "metrics": {"tick": tick}})
                with trio.fail_after(5):
                    doc = json.loads(await ws.get_message())
                assert doc["metrics"]["tick"] == tick
        shutdown.set()
