"""/ws under abuse: broken frames, huge and binary messages, floods, bad handshakes.

Every test talks to a real `python -m core` over loopback, with raw sockets
where a well-behaved client library would refuse to misbehave. After each
abuse the server must still serve (`/healthz`, a fresh client gets a
snapshot), must not leak the client (the `control_center_websocket_clients`
gauge returns to what it was) and must not log a traceback.
"""

from __future__ import annotations

import itertools
import json
import struct
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import trio
from trio_websocket import ConnectionClosed

from .conftest import (
    CoreServer,
    close_code_of,
    component_table,
    frame,
    gauge,
    handshake,
    raise_nofile,
    read_until_closed,
    serving,
    start_core,
    wait_gauge,
    ws_client,
)


def assert_serving(srv: CoreServer) -> None:
    """The server still answers and hands a new client a snapshot."""
    assert srv.alive(), srv.output()
    sock, head, rest = handshake(srv.port)
    try:
        assert head.startswith("HTTP/1.1 101"), head
        sock.settimeout(5)
        while not rest:
            rest = sock.recv(65536)
        assert rest[0] == 0x81, rest[:20]  # a final text frame: the latest snapshot
    finally:
        sock.close()
    assert "Traceback" not in srv.output(), srv.output()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoreServer]:
    with serving(tmp_path_factory.mktemp("ws-abuse"), component_table("a"), interval=0.5) as server:
        yield server


# -- invalid frames -------------------------------------------------------------------

BROKEN_FRAMES = {
    "reserved opcode 0x3": frame(0x3, b"x"),
    "reserved control opcode 0xB": frame(0xB, b"x"),
    "unmasked client frame": frame(0x1, b'{"type": "subscribe"}', mask=False),
    "RSV1 without an extension": frame(0x1, b"{}", rsv=0b100),
    "RSV2 and RSV3": frame(0x1, b"{}", rsv=0b011),
    "continuation with nothing to continue": frame(0x0, b"x"),
    "fragmented ping": frame(0x9, b"p", fin=False),
    "ping over 125 bytes": frame(0x9, b"p" * 200),
    "text that is not UTF-8": frame(0x1, b"\xff\xfe\xfd"),
    "close with a 1-byte payload": frame(0x8, b"\x03"),
}


@pytest.mark.parametrize("name", list(BROKEN_FRAMES))
def test_invalid_frame_fails_the_connection(srv, name):
    before = gauge(srv)
    sock, head, rest = handshake(srv.port)
    try:
        assert head.startswith("HTTP/1.1 101"), head
        wait_gauge(srv, before + 1)
        sock.sendall(BROKEN_FRAMES[name])
        frames, how = read_until_closed(sock, rest)
    finally:
        sock.close()
    # RFC 6455 7.1.7: fail the connection, with a close frame saying why.
    code = close_code_of(frames)
    assert how == "close" and code in (1002, 1007), (how, code)
    wait_gauge(srv, before)
    assert_serving(srv)


# -- oversized and binary messages ----------------------------------------------------


def test_ten_megabyte_message_closes_1009_without_buffering_it(srv):
    server = psutil.Process(srv.proc.pid)
    rss_before = server.memory_info().rss
    before = gauge(srv)

    async def main() -> int:
        async with ws_client(srv.ws_url) as ws:
            await ws.get_message()
            with trio.fail_after(10):
                try:
                    await ws.send_message("x" * (10 * 2**20))
                    while True:
                        await ws.get_message()
                except ConnectionClosed as exc:
                    return exc.reason.code
        raise AssertionError("unreachable")

    assert trio.run(main) == 1009
    # The close handshake completed (the with block returned) and the slot is free.
    wait_gauge(srv, before)
    grown = (server.memory_info().rss - rss_before) / 2**20
    assert grown < 5, f"the server grew {grown:.1f} MB for a refused 10 MB message"
    assert_serving(srv)


def test_endless_message_is_dropped_as_it_arrives(srv):
    # A frame header announcing 200 MB, then the bytes: the server must not keep them.
    server = psutil.Process(srv.proc.pid)
    rss_before = server.memory_info().rss
    sock, _head, rest = handshake(srv.port)
    try:
        size = 200 * 2**20
        sock.sendall(bytes([0x81, 0xFF]) + struct.pack("!Q", size) + b"\0\0\0\0")
        chunk = b"x" * 2**20
        sent = 0
        try:
            while sent < size:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may end it early; what matters is its memory
        grown = (server.memory_info().rss - rss_before) / 2**20
        frames, how = read_until_closed(sock, rest, timeout=10)
    finally:
        sock.close()
    assert grown < 10, f"the server grew {grown:.1f} MB while a 200 MB message streamed in"
    assert how in ("close", "eof", "reset")
    if how == "close":
        assert close_code_of(frames) == 1009
    assert_serving(srv)


def test_binary_frames_are_read_as_json_like_text(srv):
    """Policy: a binary frame is a message like a text one (JSON, UTF-8).

    Valid JSON subscribes; anything else gets {"type": "error"} and the
    connection stays up; the size and rate limits apply the same.
    """
    async def main() -> None:
        async with ws_client(srv.ws_url) as ws:
            await ws.get_message()
            await ws.send_message(b'{"type": "subscribe", "components": []}')
            with trio.fail_after(5):
                while json.loads(await ws.get_message())["components"]:
                    pass  # a tick sent before the subscription took effect
            await ws.send_message(b"\x00\xff binary junk")
            with trio.fail_after(5):
                while (reply := json.loads(await ws.get_message())).get("type") != "error":
                    pass
            assert "JSON" in reply["error"]
            doc = json.loads(await ws.get_message())  # still served, still filtered
            assert doc["components"] == {}
            await ws.send_message(b"\x00" * (65 * 1024))
            with trio.fail_after(5):
                try:
                    while True:
                        await ws.get_message()
                except ConnectionClosed as exc:
                    assert exc.reason.code == 1009

    trio.run(main)
    assert_serving(srv)


# -- floods ---------------------------------------------------------------------------


def test_thousand_messages_a_second_closes_1008_and_spares_the_others(srv):
    async def main() -> tuple[int, float, list[float]]:
        async with ws_client(srv.ws_url) as watcher, \
                ws_client(srv.ws_url) as flooder:
            await watcher.get_message()
            await flooder.get_message()
            arrivals: list[float] = []
            code = -1
            t0 = trio.current_time()
            async with trio.open_nursery() as nursery:
                async def watch() -> None:
                    while True:
                        await watcher.get_message()
                        arrivals.append(trio.current_time())
                nursery.start_soon(watch)

                async def drain() -> None:
                    try:
                        while True:
                            await flooder.get_message()
                    except ConnectionClosed:
                        pass
                nursery.start_soon(drain)
                # 1,000 a second, paced, for at most 3 s.
                with trio.fail_after(5):
                    for i in range(3000):
                        try:
                            await flooder.send_message('{"type": "subscribe"}')
                        except ConnectionClosed as exc:
                            code = exc.reason.code
                            break
                        await trio.sleep_until(t0 + (i + 1) / 1000)
                closed_after = trio.current_time() - t0
                await trio.sleep(2.0)  # the watcher keeps receiving meanwhile
                nursery.cancel_scope.cancel()
            if code == -1:
                code = flooder.closed.code if flooder.closed else -1
            return code, closed_after, arrivals

    code, closed_after, arrivals = trio.run(main)
    assert code == 1008
    assert closed_after < 1.5, closed_after  # message_rate 50/s with a burst of 50
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert gaps and all(0.3 < g < 0.7 for g in gaps), gaps  # interval 0.5 s kept
    assert_serving(srv)


def test_ping_flood_that_never_reads_its_pongs_is_cut_off(srv):
    # Control frames bypass the message rate limit; the pongs pile up
    # unread until the server's sends block, and a blocked client is dropped.
    before = gauge(srv)
    sock, head, _ = handshake(srv.port, rcvbuf=4096)
    assert head.startswith("HTTP/1.1 101"), head
    sock.setblocking(False)
    burst = frame(0x9, b"ping") * 100
    started, how = time.monotonic(), "still open"
    try:
        while time.monotonic() - started < 10:
            try:
                sock.send(burst)
            except BlockingIOError:
                time.sleep(0.01)
            except (BrokenPipeError, ConnectionResetError):
                how = "cut"
                break
    finally:
        sock.close()
    assert how == "cut", "a client flooding pings was never disconnected"
    # STUCK_INTERVALS (3) x interval (0.5 s), plus the watchdog's period.
    assert time.monotonic() - started < 5
    wait_gauge(srv, before)
    assert_serving(srv)


FLOODS = {
    "unsolicited pongs": frame(0xA, b"pong"),
    "empty continuation fragments": None,  # after a text frame that never finishes
    "pings": frame(0x9, b"ping"),
}


@pytest.mark.parametrize("name", list(FLOODS))
def test_control_frame_floods_close_1008_within_a_second(srv, name):
    # Every frame counts against message_rate, not only whole messages: a
    # flood of control frames or empty fragments once took a core to 100 %.
    before = gauge(srv)
    sock, head, rest = handshake(srv.port)
    try:
        assert head.startswith("HTTP/1.1 101"), head
        one = FLOODS[name]
        if one is None:
            sock.sendall(frame(0x1, b"{", fin=False))
            one = frame(0x0, b"", fin=False)
        started = time.monotonic()
        try:
            sock.sendall(one * 2000)
        except (BrokenPipeError, ConnectionResetError):
            pass
        frames, how = read_until_closed(sock, rest, timeout=3.0)
        took = time.monotonic() - started
    finally:
        sock.close()
    assert how == "close" and close_code_of(frames) == 1008, (how, frames[-1:])
    assert b"frames/s" in frames[-1][1]
    assert took < 1.0, f"closed only after {took:.2f} s"
    wait_gauge(srv, before)
    assert_serving(srv)


# -- handshakes -----------------------------------------------------------------------

BAD_HANDSHAKES = {
    "Sec-WebSocket-Version 8": {"version": "8"},
    "Sec-WebSocket-Version 14": {"version": "14"},
    "no Sec-WebSocket-Version": {"version": None},
    "no Sec-WebSocket-Key": {"key": None},
    "malformed Sec-WebSocket-Key": {"key": "abc"},
}

#: What each bad handshake must be told: status, words of the JSON error.
EXPECTED = {
    "Sec-WebSocket-Version 8": (426, "unsupported Sec-WebSocket-Version '8'"),
    "Sec-WebSocket-Version 14": (426, "unsupported Sec-WebSocket-Version '14'"),
    "no Sec-WebSocket-Version": (426, "unsupported Sec-WebSocket-Version none"),
    "no Sec-WebSocket-Key": (400, "missing Sec-WebSocket-Key"),
    "malformed Sec-WebSocket-Key": (400, "16 random bytes in base64"),
}


@pytest.mark.parametrize("name", list(BAD_HANDSHAKES))
def test_bad_handshake_gets_4xx_and_no_upgrade(srv, name):
    sock, head, rest = handshake(srv.port, **BAD_HANDSHAKES[name])  # type: ignore[arg-type]
    try:
        status = int(head.split(" ", 2)[1])
        want_status, want_words = EXPECTED[name]
        assert status == want_status, head
        assert "sec-websocket-accept" not in head.lower()
        assert "content-type: application/json" in head.lower()
        if status == 426:  # RFC 6455 4.4: say which version we speak
            assert "sec-websocket-version: 13" in head.lower()
        length = int(head.lower().split("content-length:")[1].split("\r\n")[0])
        sock.settimeout(2)
        while len(rest) < length:
            rest += sock.recv(65536)
        assert want_words in json.loads(rest[:length])["error"]
        rest = rest[length:]
        # Nothing that looks like a WebSocket frame follows. (hypercorn keeps
        # the socket until its keep-alive timeout despite "connection: close".)
        sock.settimeout(0.3)
        while rest or (rest := sock.recv(65536)):
            assert not (rest[0] & 0x0F == 0x1 and rest[0] & 0x80), rest[:20]
            rest = b""
    except (ConnectionResetError, TimeoutError):
        pass
    finally:
        sock.close()
    assert_serving(srv)


# -- load: a stuck reader among 500, a connection storm ---------------------------------


def _spread(gaps: list[float]) -> tuple[float, float, float]:
    ordered = sorted(gaps)
    return (ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.01)],
            ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))])


async def _follow(url: str, arrivals: list[float], ready: trio.Semaphore) -> None:
    """A well-behaved client: reads every snapshot, notes when each arrived."""
    async with ws_client(url) as ws:
        await ws.get_message()
        ready.release()
        while True:
            await ws.get_message()
            arrivals.append(trio.current_time())


@pytest.mark.slow
def test_stuck_reader_is_closed_and_500_others_keep_their_cadence(tmp_path):
    raise_nofile(4096)
    # 1 s: at 0.5 s the test's own 500 clients (same 2 cores) blur the figure.
    interval = 1.0
    # 20 components: a ~6 KB snapshot fills a tiny receive buffer in a tick or two.
    srv = start_core(tmp_path, "".join(component_table(f"c{i:02d}") for i in range(20)),
                     interval=interval)
    try:
        # `rest`: what the handshake read past the head (the first frame's
        # start, when the first snapshot came in the same segment): without it
        # the frames read at the end are parsed out of step.
        stuck, head, rest = handshake(srv.port, rcvbuf=4096)
        assert head.startswith("HTTP/1.1 101"), head

        async def main() -> list[list[float]]:
            per_client: list[list[float]] = [[] for _ in range(500)]
            ready = trio.Semaphore(0)
            async with trio.open_nursery() as nursery:
                for arrivals in per_client:
                    nursery.start_soon(_follow, srv.ws_url, arrivals, ready)
                with trio.fail_after(30):
                    for _ in per_client:
                        await ready.acquire()
                for arrivals in per_client:
                    arrivals.clear()  # measure from here: all 500 connected
                await trio.sleep(10 * interval)
                # The stuck one is gone (closed by the server), the 500 are all there.
                assert await trio.to_thread.run_sync(gauge, srv) == 500
                nursery.cancel_scope.cancel()
            return per_client

        per_client = trio.run(main)
        frames, how = read_until_closed(stuck, rest, timeout=5)
        stuck.close()
        assert how in ("eof", "reset") or close_code_of(frames) == 1008, (how, frames[-1:])
        assert_serving(srv)
    finally:
        srv.stop()
    gaps = [b - a for arrivals in per_client for a, b in itertools.pairwise(arrivals)]
    assert all(len(a) >= 8 for a in per_client), sorted(len(a) for a in per_client)[:5]
    # The cadence: every one of the 500 got (nearly) every tick, on the
    # interval on the whole; a stuck reader that held the fan-out would show
    # as gaps of several intervals. The spread of single gaps is the test's
    # own 500 clients sharing 2 cores with the server (bench/fanout.py
    # measures it): only a gap of two intervals counts as a lost tick here.
    median, p1, p99 = _spread(gaps)
    assert abs(median - interval) <= 0.2 * interval, (median, p1, p99)
    assert p99 <= 2.0 * interval, (median, p1, p99)


@pytest.mark.slow
def test_connection_storm_serves_max_clients_and_refuses_the_rest_1013(tmp_path):
    """300 attempts at once against max_clients = 100 (bench/connection_storm.py: 3,000/1,000)."""
    raise_nofile(4096)
    interval = 0.5
    srv = start_core(tmp_path, component_table("a"), interval=interval, max_clients=100)
    try:
        async def attempt(outcome: dict[str, Any], served: list[list[float]]) -> None:
            try:
                async with ws_client(srv.ws_url) as ws:
                    await ws.get_message()
                    outcome["served"] += 1
                    arrivals: list[float] = []
                    served.append(arrivals)
                    with trio.move_on_at(outcome["until"]):
                        while True:
                            await ws.get_message()
                            arrivals.append(trio.current_time())
            except ConnectionClosed as exc:
                key = f"closed {exc.reason.code}"
                outcome[key] = outcome.get(key, 0) + 1

        async def main() -> tuple[dict[str, Any], list[list[float]]]:
            outcome: dict[str, Any] = {"served": 0, "until": trio.current_time() + 8}
            served: list[list[float]] = []
            async with trio.open_nursery() as nursery:
                for _ in range(300):
                    nursery.start_soon(attempt, outcome, served)
            return outcome, served

        outcome, served = trio.run(main)
        assert_serving(srv)
    finally:
        srv.stop()
    del outcome["until"]
    assert outcome == {"served": 100, "closed 1013": 200}
    gaps = [b - a for arrivals in served for a, b in itertools.pairwise(arrivals[2:])]
    # The 100 served keep the cadence on the whole, and none loses a tick (a gap
    # of two intervals). Single gaps spread with the test's own 300 clients
    # sharing 2 cores with the server (p1 0.39 s at a 0.5 s interval was seen
    # on a healthy run), as in the stuck-reader test above.
    median, p1, p99 = _spread(gaps)
    assert abs(median - interval) <= 0.1 * interval, (median, p1, p99)
    assert p99 <= 2.0 * interval, (median, p1, p99)
