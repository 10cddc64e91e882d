"""REST against a real server with real children: controls, logs, history, reload."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from .conftest import sleeper, web_server

pytestmark = pytest.mark.anyio


async def test_status_is_the_hubs_text(tmp_path):
    async with web_server(tmp_path, sleeper("a"), tick=False) as srv:
        async with httpx.AsyncClient(base_url=srv.url) as http:
            assert (await http.get("/api/status")).status_code == 503  # nothing yet
            srv.hub.publish({"components": {}, "metrics": {"timestamp": "T"}, "x": 1})
            r = await http.get("/api/status")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.text == srv.hub.latest.text  # served, not recomputed


async def test_list_get_and_unknown(tmp_path):
    async with web_server(tmp_path, sleeper("a") + sleeper("b", autostart=False)) as srv:
        async with httpx.AsyncClient(base_url=srv.url) as http:
            listed = (await http.get("/api/components")).json()["components"]
            one = (await http.get("/api/components/b")).json()
            missing = await http.get("/api/components/zz")
            missing_post = await http.post("/api/components/zz/start")
            missing_logs = await http.get("/api/components/zz/logs")
    assert [c["id"] for c in listed] == ["a", "b"]
    assert one["id"] == "b" and one["state"] == "stopped" and one["plugin"] == "process"
    for r in (missing, missing_post, missing_logs):
        assert r.status_code == 404
        assert r.json() == {"success": False, "error": "no component with id 'zz'"}


async def test_start_stop_restart_and_noops(tmp_path):
    async with web_server(tmp_path, sleeper("a", autostart=False)) as srv:
        async with httpx.AsyncClient(base_url=srv.url, timeout=20) as http:
            r = await http.post("/api/components/a/stop")  # stopped: no-op
            assert r.status_code == 200 and r.json()["component"]["state"] == "stopped"
            r = await http.post("/api/components/a/start")
            body = r.json()
            assert body["success"] is True and body["component"]["id"] == "a"
            assert body["component"]["state"] in ("starting", "running")
            with trio.fail_after(10):
                while (view := (await http.get("/api/components/a")).json())["pid"] is None:
                    await trio.sleep(0.05)
            pid = view["pid"]
            again = (await http.post("/api/components/a/start")).json()["component"]
            assert again["pid"] == pid  # running: no-op
            await http.post("/api/components/a/restart")
            with trio.fail_after(10):
                while (view := (await http.get("/api/components/a")).json())["pid"] in (
                        None, pid):
                    await trio.sleep(0.05)
            assert view["restarts"] >= 0 and view["state"] == "running"
            r = await http.post("/api/components/a/stop")
            assert r.json()["component"]["state"] in ("stopping", "stopped")


async def test_concurrent_starts_spawn_one_process(tmp_path):
    async with web_server(tmp_path, sleeper("a", autostart=False),
                          server="control_rate = 1000") as srv:
        async with httpx.AsyncClient(base_url=srv.url, timeout=20) as http:
            results = []

            async def start() -> None:
                results.append(await http.post("/api/components/a/start"))

            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(start)
            assert [r.status_code for r in results] == [200] * 10
            with trio.fail_after(10):
                while (await http.get("/api/components/a")).json()["state"] != "running":
                    await trio.sleep(0.05)
            lines = (await http.get("/api/components/a/logs")).json()["lines"]
    spawned = [ln for ln in lines if ln["stream"] == "supervisor" and "started pid" in ln["text"]]
    assert len(spawned) == 1, lines


async def test_logs_lines_and_after(tmp_path):
    cmd = '["{python}", "-u", "-c", "import time\\nfor i in range(30): print(i)\\ntime.sleep(60)"]'
    comp = f'[components.talker]\nplugin = "process"\ncommand = {cmd}\n'
    async with web_server(tmp_path, comp) as srv:
        async with httpx.AsyncClient(base_url=srv.url) as http:
            with trio.fail_after(10):
                while not any(ln["text"] == "29" for ln in (await http.get(
                        "/api/components/talker/logs")).json()["lines"]):
                    await trio.sleep(0.05)
            full = (await http.get("/api/components/talker/logs")).json()
            three = (await http.get("/api/components/talker/logs?lines=3")).json()
            after = (await http.get(
                f"/api/components/talker/logs?after={full['last_seq'] - 2}")).json()
            none = (await http.get(
                f"/api/components/talker/logs?after={full['last_seq']}")).json()
            bad = [await http.get(f"/api/components/talker/logs?{q}") for q in
                   ("lines=abc", "lines=-1", "lines=5001", "after=x", "after=-3")]
    assert full["component"] == "talker"
    stdout = [ln["text"] for ln in full["lines"] if ln["stream"] == "stdout"]
    assert stdout == [str(i) for i in range(30)]
    assert [ln["seq"] for ln in three["lines"]] == [full["last_seq"] - 2 + i for i in range(3)]
    assert [ln["seq"] for ln in after["lines"]] == [full["last_seq"] - 1, full["last_seq"]]
    assert none["lines"] == [] and none["last_seq"] == full["last_seq"]
    for r in bad:
        assert r.status_code == 400 and r.json()["success"] is False, r.text


async def test_history(tmp_path):
    async with web_server(tmp_path, sleeper("a"), interval=0.1) as srv:
        async with httpx.AsyncClient(base_url=srv.url) as http:
            with trio.fail_after(5):
                while srv.hub.latest is None or srv.hub.latest.seq < 6:
                    await trio.sleep(0.05)
            everything = (await http.get("/api/history")).json()
            recent = (await http.get("/api/history?seconds=0.25")).json()
            bad = [await http.get(f"/api/history?seconds={q}") for q in ("-1", "abc", "nan")]
    assert everything["interval"] == 0.1
    points = everything["points"]
    assert len(points) >= 6
    stamps = [p["timestamp"] for p in points]
    assert stamps == sorted(stamps)
    assert set(points[-1]["components"]["a"]) == {"state", "cpu_percent", "memory_mb"}
    assert len(points[-1]["metrics"]) == 8
    assert 1 <= len(recent["points"]) <= 4
    for r in bad:
        assert r.status_code == 400 and r.json()["success"] is False


async def test_reload_added_then_bad_config_changes_nothing(tmp_path):
    async with web_server(tmp_path, sleeper("a")) as srv:
        path = srv.config.path
        async with httpx.AsyncClient(base_url=srv.url, timeout=20) as http:
            path.write_text(path.read_text() + sleeper("b", autostart=False))
            r = await http.post("/api/reload")
            assert r.status_code == 200
            assert r.json() == {"success": True, "added": ["b"], "removed": [],
                                "changed": [], "unchanged": ["a"]}
            path.write_text(path.read_text() + "\n[components.c]\nplugin = \"nope\"\n")
            r = await http.post("/api/reload")
            assert r.status_code == 400
            assert r.json()["success"] is False and "components.c.plugin" in r.json()["error"]
            ids = [c["id"] for c in (await http.get("/api/components")).json()["components"]]
    assert ids == ["a", "b"]


async def test_errors_are_json_never_5xx(tmp_path):
    async with web_server(tmp_path, sleeper("a", autostart=False)) as srv:
        async with httpx.AsyncClient(base_url=srv.url) as http:
            checks = [
                await http.get("/nope"),
                await http.delete("/api/components/a"),
                await http.post("/api/status"),
                await http.get("/static/nope.js"),
            ]
            # A body is not expected; a malformed one is ignored, not a 500.
            garbage = await http.post("/api/components/a/stop", content=b"{not json",
                                      headers={"content-type": "application/json"})
    for r in checks:
        assert 400 <= r.status_code < 500, r
        assert r.json()["success"] is False
    assert garbage.status_code == 200


async def test_public_endpoints_and_page(tmp_path):
    async with web_server(tmp_path, server='token = "t0k"\nmax_clients = 7') as srv:
        async with httpx.AsyncClient(base_url=srv.url) as http:
            info = (await http.get("/api/info")).json()
            health = (await http.get("/healthz")).json()
            page = await http.get("/")
            js = await http.get("/static/app.js")
            css = await http.get("/static/style.css")
    assert info["auth_required"] is True and info["max_clients"] == 7
    assert info["interval"] == 0.25 and info["version"]
    assert "t0k" not in json.dumps(info)
    assert health == {"status": "ok"}
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert js.headers["content-type"].split(";")[0] in ("text/javascript",
                                                        "application/javascript")
    assert css.headers["content-type"].startswith("text/css")


async def test_token(tmp_path):
    async with web_server(tmp_path, sleeper("a", autostart=False),
                          server='token = "t0k"') as srv:
        async with httpx.AsyncClient(base_url=srv.url) as http:
            for method, path in (("GET", "/api/status"), ("GET", "/api/components"),
                                 ("POST", "/api/components/a/start"), ("GET", "/metrics"),
                                 ("GET", "/api/history"), ("POST", "/api/reload")):
                for headers in ({}, {"Authorization": "Bearer wrong"},
                                {"Authorization": "Basic t0k"}):
                    r = await http.request(method, path, headers=headers)
                    assert r.status_code == 401, (method, path, headers)
                    assert r.json()["success"] is False
            ok = await http.get("/api/components", headers={"Authorization": "Bearer t0k"})
    assert ok.status_code == 200


async def test_cross_origin_posts_refused(tmp_path):
    async with web_server(tmp_path, sleeper("a", autostart=False),
                          server='allowed_origins = ["https://ops.example"]') as srv:
        async with httpx.AsyncClient(base_url=srv.url, timeout=20) as http:
            evil = await http.post("/api/components/a/stop",
                                   headers={"Origin": "https://evil.example"})
            evil_reload = await http.post("/api/reload", headers={"Origin": "null"})
            own = await http.post("/api/components/a/stop",
                                  headers={"Origin": f"http://127.0.0.1:{srv.port}"})
            allowed = await http.post("/api/components/a/stop",
                                      headers={"Origin": "https://ops.example"})
            read = await http.get("/api/components", headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403 and evil.json()["success"] is False
    assert evil_reload.status_code == 403
    assert own.status_code == 200 and allowed.status_code == 200
    assert read.status_code == 200


async def test_control_rate_limit_429(tmp_path):
    async with web_server(tmp_path, sleeper("a", autostart=False),
                          server="control_rate = 2") as srv:
        async with httpx.AsyncClient(base_url=srv.url) as http:
            codes = [(await http.post("/api/components/a/stop")).status_code
                     for _ in range(6)]
            reads = [(await http.get("/api/components/a")).status_code for _ in range(6)]
            limited = await http.post("/api/components/a/stop")
            await trio.sleep(0.6)  # the bucket refills at 2/s
            later = await http.post("/api/components/a/stop")
    assert codes[:2] == [200, 200] and 429 in codes
    assert limited.status_code == 429 and limited.json()["success"] is False
    assert reads == [200] * 6  # reads are not control requests
    assert later.status_code == 200
