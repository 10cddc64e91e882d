"""The Sutra API as a real process in front of a real storage engine."""

from __future__ import annotations

import http.client
import json
import signal

import pytest

from plugins.api.server import Window


def test_learn_query_get_and_figures(api, json_call):
    status, learned = json_call(api.url, "POST", "/learn",
                                {"content": "neurons fire in patterns", "confidence": 0.9})
    assert status == 201
    cid = learned["concept"]["id"]
    status, second = json_call(api.url, "POST", "/learn",
                               {"content": "memory is a pattern of neurons", "related": [cid]})
    assert status == 201
    # An explicit link replaces the shared-words one to the same concept.
    assert [(a["target"], a["kind"]) for a in second["associations"]] == [(cid, "related")]
    status, found = json_call(api.url, "GET", "/query?q=neurons%20patterns")
    assert status == 200
    assert found["results"][0]["id"] == cid
    status, found = json_call(api.url, "POST", "/query", {"q": "memory", "limit": 1})
    assert [r["content"] for r in found["results"]] == ["memory is a pattern of neurons"]
    assert json_call(api.url, "GET", f"/concepts/{cid}")[1]["concept"]["confidence"] == 0.9
    status, assoc = json_call(api.url, "GET", f"/concepts/{cid}/associations")
    assert status == 200 and len(assoc["associations"]) == 1
    # Ids may hold ':' and '.', which travel percent-encoded.
    assert json_call(api.url, "POST", "/learn", {"content": "named", "id": "ns:a.b"})[0] == 201
    assert json_call(api.url, "GET", "/concepts/ns%3Aa.b")[1]["concept"]["id"] == "ns:a.b"
    assert json_call(api.url, "GET", "/concepts/ns:a.b/associations")[0] == 200

    # health and stats are not counted: only the 9 data requests above.
    assert json_call(api.url, "GET", "/health") == (200, {"status": "ok", "storage": "up"})
    status, stats = json_call(api.url, "GET", "/stats")
    assert status == 200
    assert stats["requests_served"] == 9
    assert stats["errors"] == 0
    assert stats["storage"] == "up" and stats["storage_error"] is None
    assert stats["queries_per_second"] > 0
    assert 0 < stats["avg_latency_ms"] < 1000
    assert stats["window_seconds"] == 10


def test_client_errors_pass_through_as_4xx(api, json_call):
    cases = [
        ("POST", "/learn", b"{oops", 400, "JSON"),
        ("POST", "/learn", b'{"content": ""}', 400, "content"),
        ("POST", "/learn", b'{"content": "x", "related": ["ghost"]}', 400, "ghost"),
        ("GET", "/query", None, 400, "q"),
        ("POST", "/query", b'{"q": 3}', 400, "q"),
        ("GET", "/query?q=galaxy&limit=-1", None, 400, "limit"),
        ("GET", "/concepts/ghost", None, 404, "ghost"),
        ("GET", "/elsewhere", None, 404, "/elsewhere"),
        ("PUT", "/learn", None, 405, "POST"),
    ]
    for method, path, raw, want, needle in cases:
        status, body = json_call(api.url, method, path, raw=raw)
        assert (status, needle in body["error"]) == (want, True), (method, path, body)
    stats = json_call(api.url, "GET", "/stats")[1]
    assert stats["errors"] == 7 and stats["requests_served"] == 7  # 404/405 routes: not counted


def test_503_while_storage_is_down_then_recovers_without_restart(services, tmp_path,
                                                                 port_factory, json_call):
    port = port_factory()
    engine = services.engine(tmp_path / "data", port)
    api = services.api(engine.url)
    # One keep-alive client connection across the outage: the API's own
    # connection to storage goes stale and must be replaced by itself.
    client = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)

    def learn(text: str) -> tuple[int, dict]:
        client.request("POST", "/learn", body=json.dumps({"content": text}))
        resp = client.getresponse()
        return resp.status, json.loads(resp.read())

    try:
        assert learn("before the outage")[0] == 201
        assert engine.stop(signal.SIGTERM) == 0
        status, body = learn("during the outage")
        assert status == 503
        assert f"storage engine unavailable at {engine.url}" in body["error"]
        status, body = json_call(api.url, "GET", "/query?q=outage")
        assert status == 503
        status, health = json_call(api.url, "GET", "/health")
        assert status == 503 and health["storage"] == "down"
        assert "Connection refused" in health["error"]
        stats = json_call(api.url, "GET", "/stats")[1]
        assert stats["storage"] == "down" and "unavailable" in stats["storage_error"]

        again = services.engine(tmp_path / "data", port)
        status, body = learn("after the outage")
        assert status == 201, body
        assert json_call(api.url, "GET", "/health")[0] == 200
        found = json_call(api.url, "GET", "/query?q=outage")[1]["results"]
        assert sorted(r["content"] for r in found) == ["after the outage", "before the outage"]
        assert api.proc.poll() is None
        assert again.stop() == 0
    finally:
        client.close()


def test_replayed_learn_is_not_stored_twice(services, tmp_path, port_factory, json_call):
    """A storage restart between two learns on one API thread: the stale
    connection is retried, and the concept is stored exactly once."""
    port = port_factory()
    engine = services.engine(tmp_path / "data", port)
    api = services.api(engine.url)
    client = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    try:
        for i in range(3):
            client.request("POST", "/learn", body=json.dumps({"content": f"round {i}"}))
            resp = client.getresponse()
            assert resp.status == 201, resp.read()
            resp.read()
            engine.stop()
            engine = services.engine(tmp_path / "data", port)
        assert json_call(engine.url, "GET", "/stats")[1]["total_concepts"] == 3
    finally:
        client.close()


def test_sigterm_exits_0(api):
    assert api.stop(signal.SIGTERM) == 0
    assert "stopped" in api.output()


def test_window_figures():
    window = Window(seconds=3)
    assert window.figures()["queries_per_second"] == 0.0
    assert window.figures()["avg_latency_ms"] == 0.0
    for latency in (0.010, 0.020, 0.030):
        window.record(latency)
    window.record(0.040, error=True)
    figures = window.figures()
    assert figures["requests_served"] == 4 and figures["errors"] == 1
    # Less than a second since the start: divided by one second, not by 3.
    assert figures["queries_per_second"] == 4.0
    assert figures["avg_latency_ms"] == pytest.approx(25.0)


def test_window_forgets_old_requests():
    now = [1000.0]
    window = Window(seconds=10, clock=lambda: now[0])
    for _ in range(20):
        window.record(0.002)
    now[0] += 5
    assert window.figures()["queries_per_second"] == 4.0  # 20 over 5 s elapsed
    now[0] += 5.5
    figures = window.figures()
    assert figures["queries_per_second"] == 0.0
    assert figures["avg_latency_ms"] == 0.0
    assert figures["requests_served"] == 20


def test_short_connections_do_not_leak_descriptors(api, json_call):
    import time

    import psutil

    process = psutil.Process(api.proc.pid)
    for _ in range(20):
        json_call(api.url, "GET", "/concepts/ghost")
    before = process.num_fds()
    for _ in range(200):
        json_call(api.url, "GET", "/concepts/ghost")
    time.sleep(0.2)
    assert process.num_fds() <= before + 10
