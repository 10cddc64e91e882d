"""POST /api/components/{id}/scale, control of ID and ID.K over REST, and `python -m core scale`."""

from __future__ import annotations

import httpx
import pytest
import trio

from core.identity import required_role

from .conftest import sleeper, web_server
from .test_client_cli import cli, err, out
from .test_openapi_metrics_tls import check

pytestmark = pytest.mark.anyio


async def _running(http: httpx.AsyncClient, cid: str, n: int) -> dict:
    """Once `cid` has `n` instances, each with a pid: its view."""
    with trio.fail_after(20):
        while True:
            view = (await http.get(f"/api/components/{cid}")).json()
            pids = [c["pid"] for c in view["components"].values() if c["state"] == "running"]
            if view["instances"] == n and len(pids) == n and None not in pids:
                return view
            await trio.sleep(0.05)


def _pids(view: dict) -> dict[str, int]:
    return {cid: c["pid"] for cid, c in view["components"].items()}


async def test_scale_over_rest(tmp_path):
    async with web_server(tmp_path, sleeper("web", instances=2) + sleeper("solo"),
                          interval=0.1) as srv:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as http:
            spec = (await http.get("/openapi.json")).json()
            op = spec["paths"]["/api/components/{cid}/scale"]["post"]
            assert op["x-required-role"] == "operator"
            assert required_role("POST", "/api/components/web/scale") == "operator"
            view = await _running(http, "web", 2)
            check(spec, "/api/components/{cid}", "get", await http.get("/api/components/web"))
            check(spec, "/api/components/{cid}", "get",
                  await http.get("/api/components/web.1"))
            assert (await http.get("/api/components/web.1")).json()["instance_of"] == "web"
            answer = await http.post("/api/components/web/scale", json={"instances": 4})
            assert answer.status_code == 200, answer.text
            check(spec, "/api/components/{cid}/scale", "post", answer)
            assert answer.json()["component"]["id"] == "web"
            bigger = await _running(http, "web", 4)
            assert {k: _pids(bigger)[k] for k in ("web.0", "web.1")} == _pids(view)
            assert len(set(_pids(bigger).values())) == 4

            # The snapshot has one entry per instance, each with its own pid.
            with trio.fail_after(10):
                while True:
                    comps = (await http.get("/api/status")).json()["components"]
                    if all(comps.get(f"web.{k}", {}).get("pid") for k in range(4)):
                        break
                    await trio.sleep(0.05)
            assert "web" not in comps and comps["solo"].get("instance_of") is None
            assert {comps[f"web.{k}"]["instance_of"] for k in range(4)} == {"web"}

            # Control of ID.K acts on one, of ID on all.
            one = await http.post("/api/components/web.3/stop?wait=true")
            check(spec, "/api/components/{cid}/stop", "post", one)
            assert one.json()["component"]["state"] == "stopped"
            after = (await http.get("/api/components/web")).json()
            assert after["running"] == 3 and after["components"]["web.3"]["pid"] is None
            everyone = await http.post("/api/components/web/stop?wait=true")
            check(spec, "/api/components/{cid}/stop", "post", everyone)
            assert everyone.json()["component"]["running"] == 0
            assert {c["state"] for c in everyone.json()["component"]["components"].values()
                    } == {"stopped"}
            started = await http.post("/api/components/web/start")
            check(spec, "/api/components/{cid}/start", "post", started)
            await _running(http, "web", 4)

            # Bad requests: 400 with a clear error, nothing changed.
            before = _pids(await _running(http, "web", 4))
            cases = [
                ({"instances": -1}, "expected an integer from 0 to 1000, got -1"),
                ({"instances": 1001}, "expected an integer from 0 to 1000, got 1001"),
                ({"instances": 2.5}, "got 2.5"),
                ({"instances": "3"}, "got '3'"),
                ({"instances": None}, "got null"),
                ({"count": 3}, 'the key "instances"'),
                ({"instances": 3, "force": True}, "unknown key 'force'"),
                ([3], 'the key "instances"'),
            ]
            for body, words in cases:
                refused = await http.post("/api/components/web/scale", json=body)
                assert refused.status_code == 400, (body, refused.text)
                assert refused.json()["success"] is False and words in refused.json()["error"]
                check(spec, "/api/components/{cid}/scale", "post", refused)
            for raw in (b"", b"not json", b"{" * 5000):
                refused = await http.post("/api/components/web/scale", content=raw)
                assert refused.status_code == 400 and "instances" in refused.json()["error"]
            refused = await http.post("/api/components/web.1/scale", json={"instances": 2})
            assert refused.status_code == 400
            assert "scale 'web'" in refused.json()["error"]
            missing = await http.post("/api/components/nope/scale", json={"instances": 2})
            assert missing.status_code == 404 and "nope" in missing.json()["error"]
            check(spec, "/api/components/{cid}/scale", "post", missing)
            assert _pids((await http.get("/api/components/web")).json()) == before

            # A reload returns to the config's count.
            reloaded = await http.post("/api/reload")
            assert reloaded.status_code == 200 and reloaded.json()["unchanged"] == [
                "web", "solo"]
            back = await _running(http, "web", 2)
            assert _pids(back) == {k: before[k] for k in ("web.0", "web.1")}


async def test_cli_scale(tmp_path):
    async with web_server(tmp_path, sleeper("web", instances=1)) as srv:
        url = ["--url", srv.url]
        scaled = await cli("scale", "web", "3", *url)
        assert scaled.returncode == 0, err(scaled)
        lines = out(scaled).splitlines()
        assert lines[0].startswith("web: ") and "of 3 instances running" in lines[0]
        assert [ln.split(":")[0] for ln in lines[1:]] == ["web.0", "web.1", "web.2"]
        with trio.fail_after(20):
            while len([c for c in srv.supervisor.component_ids()
                       if srv.supervisor.view(c)["pid"]]) < 3:
                await trio.sleep(0.05)
        status = await cli("status", *url)
        with trio.fail_after(10):
            while "web.2" not in out(status):
                await trio.sleep(0.2)
                status = await cli("status", *url)
        bad = await cli("scale", "web", "-4", *url)
        assert bad.returncode == 1 and out(bad) == ""
        assert "expected an integer from 0 to 1000, got -4 (HTTP 400)" in err(bad)
        one = await cli("scale", "web.0", "2", *url)
        assert one.returncode == 1 and "scale 'web'" in err(one)
        gone = await cli("scale", "nope", "2", *url)
        assert gone.returncode == 1 and "(HTTP 404)" in err(gone)
        down = await cli("scale", "web", "1", *url)
        assert down.returncode == 0 and srv.supervisor.component_ids() == ["web.0"]
