"""The OpenAPI document matches real responses; /metrics; TLS with a made-up CA."""

from __future__ import annotations

import json
import ssl

import httpx
import jsonschema
import pytest
import trio
import trustme
from prometheus_client.parser import text_string_to_metric_families

from core.client import Client

from .conftest import sleeper, web_server, ws_client

pytestmark = pytest.mark.anyio


def check(spec: dict, path: str, method: str, response: httpx.Response) -> None:
    """Validate `response` against the schema the document gives for it."""
    op = spec["paths"][path][method]
    answer = op["responses"][str(response.status_code)]
    schema = answer["content"]["application/json"]["schema"]
    root = {**spec, **schema}  # refs resolve against the whole document
    jsonschema.Draft202012Validator(root).validate(response.json())


async def test_openapi_document_matches_real_responses(tmp_path):
    comps = sleeper("a") + sleeper("b", autostart=False, depends_on=["a"])
    async with web_server(tmp_path, comps, interval=0.1) as srv:
        async with httpx.AsyncClient(base_url=srv.url, timeout=20) as http:
            spec = (await http.get("/openapi.json")).json()
            jsonschema.Draft202012Validator.check_schema(spec["components"]["schemas"]["Error"])
            assert spec["openapi"].startswith("3.1")
            with trio.fail_after(10):
                while (await http.get("/api/components/a")).json()["state"] != "running":
                    await trio.sleep(0.05)
            cases = [
                ("/api/status", "get", "/api/status"),
                ("/api/components", "get", "/api/components"),
                ("/api/components/{cid}", "get", "/api/components/a"),
                ("/api/components/{cid}", "get", "/api/components/nope"),
                ("/api/components/{cid}/logs", "get", "/api/components/a/logs?lines=5"),
                ("/api/components/{cid}/logs", "get", "/api/components/a/logs?lines=x"),
                ("/api/history", "get", "/api/history?seconds=60"),
                ("/api/history", "get", "/api/history?seconds=-1"),
                ("/api/info", "get", "/api/info"),
                ("/healthz", "get", "/healthz"),
                ("/api/components/{cid}/start", "post", "/api/components/b/start"),
                ("/api/components/{cid}/restart", "post", "/api/components/a/restart"),
                ("/api/components/{cid}/stop", "post", "/api/components/b/stop"),
                ("/api/components/{cid}/stop", "post", "/api/components/nope/stop"),
                ("/api/reload", "post", "/api/reload"),
            ]
            for path, method, url in cases:
                response = await http.request(method.upper(), url)
                check(spec, path, method, response)
            # Every path the document names exists on the server.
            for path in spec["paths"]:
                url = path.replace("{cid}", "a")
                method = next(iter(spec["paths"][path])).upper()
                if method == "GET":
                    assert (await http.get(url)).status_code == 200, path
            history = (await http.get("/api/history")).json()
            assert history["points"], "history must not be empty"
            check(spec, "/api/history", "get", await http.get("/api/history"))


async def test_schema_catches_a_wrong_document(tmp_path):
    # The check above must be able to fail: a state outside the five.
    async with web_server(tmp_path) as srv:
        async with httpx.AsyncClient(base_url=srv.url) as http:
            spec = (await http.get("/openapi.json")).json()
    schema = {**spec, "$ref": "#/components/schemas/Component"}
    bad = {"name": "x", "state": "backoff", "pid": None, "uptime": None, "cpu_percent": None,
           "memory_mb": None, "error": None, "last_updated": "2025-10-17T05:00:00Z",
           "plugin": "process", "restarts": 0, "exit_code": None, "health": None,
           "next_restart_in": None, "depends_on": [], "metrics": {},
           "containment": "process-group", "limits": {}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(bad)
    jsonschema.Draft202012Validator(schema).validate({**bad, "state": "running"})


async def test_prometheus_metrics(tmp_path):
    async with web_server(tmp_path, sleeper("a") + sleeper("b", autostart=False),
                          interval=0.1) as srv:
        async with httpx.AsyncClient(base_url=srv.url) as http, ws_client(srv.ws_url) as ws:
            await ws.get_message()
            with trio.fail_after(10):
                while srv.hub.latest.doc["components"]["a"]["memory_mb"] is None:
                    await trio.sleep(0.05)
            r = await http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(r.text) for s in fam.samples}
    assert samples[("control_center_websocket_clients", ())] == 1
    assert samples[("control_center_component_up", (("component", "a"),))] == 1
    assert samples[("control_center_component_up", (("component", "b"),))] == 0
    assert samples[("control_center_component_state",
                    (("component", "b"), ("state", "stopped")))] == 1
    assert samples[("control_center_component_restarts_total", (("component", "a"),))] == 0
    assert samples[("control_center_component_memory_bytes", (("component", "a"),))] > 1e6
    assert ("control_center_component_cpu_percent", (("component", "a"),)) in samples
    assert 0 <= samples[("control_center_system_memory_percent", ())] <= 100
    assert ("control_center_system_cpu_percent", ()) in samples


async def test_tls(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    server = 'tls_cert = "cert.pem"\ntls_key = "key.pem"'
    async with web_server(tmp_path, sleeper("a"), server=server) as srv:
        assert srv.url.startswith("https://")
        async with httpx.AsyncClient(base_url=srv.url, verify=client_ctx) as http:
            assert (await http.get("/healthz")).json() == {"status": "ok"}
        async with httpx.AsyncClient(base_url=srv.url, verify=ssl.create_default_context()
                                     ) as untrusting:
            with pytest.raises(httpx.ConnectError):
                await untrusting.get("/healthz")
        async with ws_client(srv.ws_url, ssl_context=client_ctx) as ws:
            assert "components" in json.loads(await ws.get_message())
        async with Client(srv.url, ssl_context=client_ctx) as cc:  # https + wss
            assert [c["id"] for c in await cc.components()] == ["a"]
            async with cc.snapshots() as stream:
                assert "a" in (await stream.receive())["components"]
        # HTTP/2 is not offered: a client that prefers it gets HTTP/1.1.
        h2_ctx = ssl.create_default_context()
        ca.configure_trust(h2_ctx)
        h2_ctx.set_alpn_protocols(["h2", "http/1.1"])
        stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", srv.port,
                                                     ssl_context=h2_ctx)
        try:
            await stream.do_handshake()
            assert stream.selected_alpn_protocol() == "http/1.1"
        finally:
            await stream.aclose()
