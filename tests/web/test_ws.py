"""/ws against a real server: handshake, messages, cadence, filters, close codes."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import socket
import statistics

import pytest
import trio
from trio_websocket import ConnectionClosed

from core.config import load
from core.errors import ConfigError

from .conftest import sleeper, web_server, ws_client

pytestmark = pytest.mark.anyio

SEED_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
SEED_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
METRICS = {"timestamp", "total_concepts", "total_associations", "storage_size_mb",
           "queries_per_second", "avg_latency_ms", "cpu_percent", "memory_percent"}
SEED_FIELDS = {"name", "state", "pid", "uptime", "cpu_percent", "memory_mb", "error",
               "last_updated"}
EXTRA_FIELDS = {"plugin", "restarts", "exit_code", "health", "next_restart_in", "depends_on",
                "metrics", "containment", "limits"}


async def close_code(ws, timeout: float = 5.0) -> int:
    """Read until the server closes; its close code."""
    with trio.fail_after(timeout):
        while True:
            try:
                await ws.get_message()
            except ConnectionClosed as exc:
                return exc.reason.code


def raw_handshake(port: int, extra: str = "", path: str = "/ws") -> tuple[str, bytes]:
    """The seed's handshake over a plain socket: (response head, what followed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {SEED_KEY}\r\n"
                   f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        while len(rest) < 2:
            more = s.recv(65536)
            if not more:
                break
            rest += more
        return head.decode(), rest


async def refused(port: int, extra: str = "", path: str = "/ws") -> tuple[int, dict]:
    """Status and JSON body of a handshake the server refuses."""
    head, body = await trio.to_thread.run_sync(raw_handshake, port, extra, path)
    return int(head.split()[1]), json.loads(body)


async def test_rfc6455_handshake_and_first_frame(tmp_path):
    # The accept key is base64(sha1(key + GUID)); the seed's example pair.
    guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    assert base64.b64encode(hashlib.sha1((SEED_KEY + guid).encode()).digest()).decode() \
        == SEED_ACCEPT
    async with web_server(tmp_path, sleeper("a")) as srv:
        head, frame = await trio.to_thread.run_sync(raw_handshake, srv.port)
    lines = head.split("\r\n")
    assert lines[0].startswith("HTTP/1.1 101")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    assert headers["sec-websocket-accept"] == SEED_ACCEPT
    assert headers["upgrade"].lower() == "websocket"
    assert "sec-websocket-extensions" not in headers
    # The latest snapshot follows at once: a final text frame (FIN + opcode 1).
    assert frame[0] == 0x81


async def test_permessage_deflate_offer_is_never_taken(tmp_path):
    offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    async with web_server(tmp_path, sleeper("a")) as srv:
        head, frame = await trio.to_thread.run_sync(raw_handshake, srv.port, offer)
    assert head.startswith("HTTP/1.1 101")
    assert "permessage-deflate" not in head.lower()
    assert frame[0] == 0x81  # RSV1 clear: not compressed


def test_compression_key_is_a_config_error_that_says_why(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[server]\ncompression = true\n")
    with pytest.raises(ConfigError) as refused:
        load(path)
    message = str(refused.value)
    assert "server.compression" in message and "never compressed" in message


async def test_snapshot_shape_then_one_per_tick(tmp_path):
    interval = 0.25
    async with web_server(tmp_path, sleeper("a") + sleeper("b", autostart=False),
                          interval=interval) as srv:
        async with ws_client(srv.ws_url) as ws:
            t0 = trio.current_time()
            first = json.loads(await ws.get_message())
            assert trio.current_time() - t0 < interval / 2  # at once, not a tick later
            stamps = []
            for _ in range(9):
                doc = json.loads(await ws.get_message())
                stamps.append(trio.current_time())
    assert set(first) == {"components", "metrics"}
    assert set(first["metrics"]) == METRICS
    assert first["metrics"]["timestamp"].endswith("Z")
    assert list(first["components"]) == ["a", "b"]
    for comp in first["components"].values():
        assert set(comp) == SEED_FIELDS | EXTRA_FIELDS
        assert comp["state"] in {"stopped", "starting", "running", "stopping", "error"}
    assert doc["components"]["a"]["state"] == "running"
    assert isinstance(doc["components"]["a"]["pid"], int)
    assert doc["components"]["b"]["pid"] is None
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert abs(statistics.mean(gaps) - interval) <= 0.1 * interval, gaps
    assert abs(statistics.median(gaps) - interval) <= 0.1 * interval, gaps
    # The tick runs on an absolute schedule: jitter never accumulates, and
    # no tick is missed or doubled.
    drift = [abs(t - stamps[0] - k * interval) for k, t in enumerate(stamps)]
    assert max(drift) <= 0.5 * interval, drift


async def test_every_client_gets_the_same_encoding(tmp_path):
    async with web_server(tmp_path, sleeper("a"), interval=0.2) as srv:
        async with ws_client(srv.ws_url) as ws1, ws_client(srv.ws_url) as ws2:
            snap = await srv.hub.wait_after(srv.hub.latest.seq)
            texts1 = {await ws1.get_message() for _ in range(3)}
            texts2 = {await ws2.get_message() for _ in range(3)}
    assert snap.text in texts1 & texts2


async def test_close_1001_on_shutdown(tmp_path):
    async with web_server(tmp_path, sleeper("a")) as srv:
        async with ws_client(srv.ws_url) as ws1, ws_client(srv.ws_url) as ws2:
            await ws1.get_message()
            await ws2.get_message()
            srv.shutdown.set()
            assert await close_code(ws1) == 1001
            assert await close_code(ws2) == 1001


async def test_subscribe_filters_components_and_metrics(tmp_path):
    async with web_server(tmp_path, sleeper("a") + sleeper("b", autostart=False)) as srv:
        async with ws_client(srv.ws_url) as ws:
            await ws.get_message()
            await ws.send_message(json.dumps(
                {"type": "subscribe", "components": ["b"], "metrics": ["cpu", "memory_percent"]}))
            for _ in range(2):  # the reply at once, then the ticks
                doc = json.loads(await ws.get_message())
                assert list(doc["components"]) == ["b"]
                assert set(doc["metrics"]) == {"timestamp", "cpu_percent", "memory_percent"}
            await ws.send_message(json.dumps({"type": "subscribe", "components": ["a"]}))
            doc = json.loads(await ws.get_message())
            assert list(doc["components"]) == ["a"]
            assert set(doc["metrics"]) == METRICS  # no "metrics" key: no filter


@pytest.mark.parametrize("message", [
    "not json", "[1, 2]", '{"type": "unsubscribe"}', '{"type": "subscribe", "components": "a"}',
    '{"type": "subscribe", "colour": "red"}', b"\xff\xfe"])
async def test_bad_message_gets_an_error_and_the_connection_stays(tmp_path, message):
    async with web_server(tmp_path) as srv:
        async with ws_client(srv.ws_url) as ws:
            await ws.get_message()
            await ws.send_message(message)
            while "error" not in (reply := json.loads(await ws.get_message())):
                pass  # a tick may come first
            assert reply["type"] == "error" and reply["error"]
            doc = json.loads(await ws.get_message())  # still served
            assert "components" in doc


async def test_message_flood_closes_1008(tmp_path):
    async with web_server(tmp_path, server="message_rate = 5") as srv:
        async with ws_client(srv.ws_url) as ws:
            for _ in range(5):
                await ws.send_message('{"type": "subscribe"}')
            with trio.fail_after(5):
                for _ in range(20):
                    try:
                        await ws.send_message('{"type": "subscribe"}')
                    except ConnectionClosed:
                        break
            assert await close_code(ws) == 1008


async def test_oversized_message_closes_1009(tmp_path):
    async with web_server(tmp_path, server="max_message_bytes = 1024") as srv:
        async with ws_client(srv.ws_url) as ws:
            await ws.send_message(json.dumps({"type": "subscribe", "components": ["x" * 900]}))
            await ws.get_message()  # under the limit: served
            await ws.send_message("x" * 2000)
            assert await close_code(ws) == 1009


async def test_max_clients_closes_1013(tmp_path):
    async with web_server(tmp_path, server="max_clients = 2") as srv:
        async with ws_client(srv.ws_url) as ws1, ws_client(srv.ws_url) as ws2:
            await ws1.get_message()
            await ws2.get_message()
            async with ws_client(srv.ws_url) as ws3:
                assert await close_code(ws3) == 1013
            await ws1.get_message()  # the others are unaffected


async def test_internal_error_closes_1011_and_only_that_client(tmp_path):
    # A malformed document (components not a table) breaks filtering.
    async with web_server(tmp_path, tick=False) as srv:
        srv.hub.publish({"components": {"a": {}}, "metrics": {}})
        async with ws_client(srv.ws_url) as filtered, ws_client(srv.ws_url) as plain:
            await filtered.get_message()
            await plain.get_message()
            await filtered.send_message('{"type": "subscribe", "components": ["a"]}')
            assert json.loads(await filtered.get_message())["components"] == {"a": {}}
            srv.hub.publish({"components": ["not", "a", "table"], "metrics": {}})
            assert await close_code(filtered) == 1011
            assert json.loads(await plain.get_message())["components"] == ["not", "a", "table"]
            srv.hub.publish({"components": {}, "metrics": {}})
            assert json.loads(await plain.get_message())["components"] == {}


async def test_token_required_for_the_handshake(tmp_path):
    async with web_server(tmp_path, server='token = "s3cret"') as srv:
        for extra in ("", "Authorization: Bearer wrong\r\n"):
            status, body = await refused(srv.port, extra)
            assert status == 401 and body["success"] is False
        assert (await refused(srv.port, path="/ws?token=nope"))[0] == 401
        async with ws_client(srv.ws_url + "?token=s3cret") as ws:
            assert "components" in json.loads(await ws.get_message())
        headers = [(b"authorization", b"Bearer s3cret")]
        async with ws_client(srv.ws_url, extra_headers=headers) as ws:
            assert "components" in json.loads(await ws.get_message())


async def test_foreign_origin_refused_403(tmp_path):
    async with web_server(tmp_path, server='allowed_origins = ["http://ok.example"]') as srv:
        status, body = await refused(srv.port, "Origin: http://evil.example\r\n")
        assert status == 403 and "origin" in body["error"]
        for origin in (b"http://ok.example", f"http://127.0.0.1:{srv.port}".encode()):
            async with ws_client(srv.ws_url, extra_headers=[(b"origin", origin)]) as ws:
                assert "components" in json.loads(await ws.get_message())


async def test_unknown_websocket_path_refused(tmp_path):
    async with web_server(tmp_path) as srv:
        status, body = await refused(srv.port, path="/other")
    assert status == 404 and "/ws" in body["error"]
