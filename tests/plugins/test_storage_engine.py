"""The storage engine as a real process: protocol, errors, shutdown, durability."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest


def test_learn_fetch_search_associations_stats_health(engine, json_call):
    url = engine.url
    assert json_call(url, "GET", "/health") == (200, {"status": "ok"})
    status, first = json_call(url, "POST", "/concepts",
                              {"content": "Photons travel through the galaxy", "id": "photon"})
    assert status == 201
    assert first["concept"]["id"] == "photon"
    assert first["concept"]["created"].endswith("Z")
    assert first["associations"] == []
    status, second = json_call(url, "POST", "/concepts",
                               {"content": "Gravity bends photons near a galaxy",
                                "strength": 0.5, "confidence": 0.25})
    assert status == 201
    gid = second["concept"]["id"]
    # Linked to the first by the shared words: photons and galaxy, 2 of its 5.
    assert second["associations"] == [
        {"source": gid, "target": "photon", "kind": "shared_words", "strength": 0.4}]
    status, third = json_call(url, "POST", "/concepts",
                              {"content": "Unrelated words entirely", "related": ["photon"],
                               "kind": "example", "link_words": False})
    assert status == 201
    tid = third["concept"]["id"]
    assert third["associations"] == [
        {"source": tid, "target": "photon", "kind": "example", "strength": 1.0}]

    status, got = json_call(url, "GET", f"/concepts/{gid}")
    assert status == 200
    assert got["concept"]["content"] == "Gravity bends photons near a galaxy"
    assert (got["concept"]["strength"], got["concept"]["confidence"]) == (0.5, 0.25)

    status, assoc = json_call(url, "GET", "/concepts/photon/associations")
    assert status == 200
    assert {(a["source"], a["kind"]) for a in assoc["associations"]} == {
        (gid, "shared_words"), (tid, "example")}

    status, found = json_call(url, "GET", "/search?q=galaxy%20gravity&limit=5")
    assert status == 200
    assert [r["id"] for r in found["results"]] == [gid, "photon"]
    assert [r["score"] for r in found["results"]] == [1.0, 0.5]
    status, found = json_call(url, "GET", "/search?q=galaxy&limit=1")
    assert len(found["results"]) == 1

    status, stats = json_call(url, "GET", "/stats")
    assert status == 200
    assert stats["total_concepts"] == 3
    assert stats["total_associations"] == 2
    assert stats["storage_bytes"] > 0
    assert stats["storage_size_mb"] == round(stats["storage_bytes"] / 1_048_576, 3)


BAD_REQUESTS = [
    ("POST", "/concepts", b"{not json", 400, "not valid JSON"),
    ("POST", "/concepts", b"[1, 2]", 400, "JSON object"),
    ("POST", "/concepts", b"{}", 400, "content"),
    ("POST", "/concepts", b'{"content": "   "}', 400, "content"),
    ("POST", "/concepts", b'{"content": "x", "strength": 2}', 400, "strength"),
    ("POST", "/concepts", b'{"content": "x", "confidence": "high"}', 400, "confidence"),
    ("POST", "/concepts", b'{"content": "x", "colour": 1}', 400, "colour"),
    ("POST", "/concepts", b'{"content": "x", "related": ["missing"]}', 400, "missing"),
    ("POST", "/concepts", b'{"content": "x", "related": "one"}', 400, "related"),
    ("POST", "/concepts", b'{"content": "x", "id": "has space"}', 400, "id"),
    ("POST", "/concepts", b'{"content": "x", "link_words": 1}', 400, "link_words"),
    ("POST", "/concepts", b'{"content": "' + b"x" * 20000 + b'"}', 413, "longer"),
    ("GET", "/concepts/nope", None, 404, "nope"),
    ("GET", "/concepts/nope/associations", None, 404, "nope"),
    ("GET", "/nowhere", None, 404, "/nowhere"),
    ("GET", "/concepts", None, 405, "POST"),
    ("DELETE", "/stats", None, 405, "GET"),
    ("GET", "/search", None, 400, "q"),
    ("GET", "/search?q=the%20a", None, 400, "word"),
    ("GET", "/search?q=galaxy&limit=0", None, 400, "limit"),
    ("GET", "/search?q=galaxy&limit=many", None, 400, "limit"),
]


def test_bad_requests_get_4xx_json_and_the_engine_stays_up(engine, json_call):
    for method, path, raw, want, needle in BAD_REQUESTS:
        status, body = json_call(engine.url, method, path, raw=raw)
        assert (status, needle in body["error"]) == (want, True), (method, path, raw, body)
    assert json_call(engine.url, "POST", "/concepts", {"content": "x", "id": "dup"})[0] == 201
    status, body = json_call(engine.url, "POST", "/concepts", {"content": "y", "id": "dup"})
    assert status == 409 and "already exists" in body["error"]
    # Missing Content-Length, oversized body, garbage request line: raw socket.
    for request, want in [
        (b"POST /concepts HTTP/1.1\r\nHost: x\r\n\r\n", b" 411 "),
        (b"POST /concepts HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", b" 413 "),
        (b"GARBAGE\r\n\r\n", b" 400 "),
    ]:
        with socket.create_connection(("127.0.0.1", engine.port), timeout=5) as s:
            s.sendall(request)
            answer = b""
            while chunk := s.recv(65536):  # the engine closes after these errors
                answer += chunk
        assert want in answer.split(b"\r\n")[0], answer
        assert b'{"error":' in answer, answer
    assert json_call(engine.url, "GET", "/health") == (200, {"status": "ok"})
    assert engine.proc.poll() is None


def _count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM concepts").fetchone()[0]


@pytest.mark.parametrize("how", ["sigterm", "post"])
def test_clean_shutdown_checkpoints_and_exits_0(services, tmp_path, json_call, how):
    data = tmp_path / "data"
    engine = services.engine(data)
    for i in range(20):
        assert json_call(engine.url, "POST", "/concepts", {"content": f"item {i} alpha"})[0] == 201
    assert (data / "knowledge.db-wal").stat().st_size > 0
    # An idle keep-alive client must not hold the shutdown up.
    idle = http.client.HTTPConnection("127.0.0.1", engine.port, timeout=5)
    idle.request("GET", "/health")
    assert idle.getresponse().read() == b'{"status":"ok"}'
    started = time.monotonic()
    try:
        if how == "post":
            assert json_call(engine.url, "POST", "/shutdown") == (202,
                                                                  {"status": "shutting down"})
            assert engine.proc.wait(10) == 0
        else:
            assert engine.stop(signal.SIGTERM) == 0
    finally:
        idle.close()
    assert time.monotonic() - started < 3
    wal = data / "knowledge.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    assert "WAL checkpointed" in engine.output()
    assert _count(data / "knowledge.db") == 20


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_kill9_during_write_burst_loses_no_acknowledged_concept(services, tmp_path,
                                                                json_call, sync):
    data = tmp_path / "data"
    engine = services.engine(data, 0, "--sync", sync)
    acked: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()

    def writer(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", engine.port, timeout=5)
        try:
            for i in range(5000):  # bounded; the kill ends it long before
                body = json.dumps({"content": f"burst writer {n} item {i} signal pattern"})
                try:
                    conn.request("POST", "/concepts", body=body)
                    resp = conn.getresponse()
                    answer = json.loads(resp.read())
                except (OSError, http.client.HTTPException, ValueError):
                    return
                assert resp.status == 201, answer
                with lock:
                    acked.append(answer["concept"]["id"])
                    if len(acked) >= 150:
                        enough.set()
        finally:
            conn.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    assert enough.wait(30), "the engine did not acknowledge 150 writes in 30 s"
    engine.stop(signal.SIGKILL)
    for t in threads:
        t.join(10)
    with lock:
        acknowledged = list(acked)
    # Reopen the same data directory: every acknowledged concept is there.
    again = services.engine(data, 0, "--sync", sync)
    status, stats = json_call(again.url, "GET", "/stats")
    assert stats["total_concepts"] >= len(acknowledged)
    for cid in acknowledged:
        status, got = json_call(again.url, "GET", f"/concepts/{cid}")
        assert status == 200, (cid, got)
    assert again.stop() == 0


def test_concurrent_reads_and_writes(engine, json_call):
    errors: list[object] = []
    done = time.monotonic() + 1.0

    def reader() -> None:
        while time.monotonic() < done:
            status, body = json_call(engine.url, "GET", "/search?q=pattern")
            if status != 200:
                errors.append(body)

    def writer() -> None:
        for i in range(50):
            status, body = json_call(engine.url, "POST", "/concepts",
                                     {"content": f"pattern number {i}"})
            if status != 201:
                errors.append(body)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert errors == []
    assert json_call(engine.url, "GET", "/stats")[1]["total_concepts"] == 50


def test_short_connections_do_not_leak_descriptors(engine, json_call):
    import psutil

    json_call(engine.url, "POST", "/concepts", {"content": "pattern of descriptors"})
    process = psutil.Process(engine.proc.pid)
    for _ in range(20):  # warm up: lazily opened files, thread stacks
        json_call(engine.url, "GET", "/search?q=pattern")
    before = process.num_fds()
    for _ in range(200):
        json_call(engine.url, "GET", "/search?q=pattern")
    time.sleep(0.2)  # the last handler threads finish after answering
    # Without closing each connection's SQLite reader: ~600 more descriptors.
    assert process.num_fds() <= before + 10
