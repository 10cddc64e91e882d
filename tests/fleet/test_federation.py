"""A parent Control Center following two children: merged snapshot, control, logs."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest

from .conftest import Fleet, component_table, remote_table, watch

pytestmark = pytest.mark.anyio

CHILD_TOKEN = "child-" + secrets.token_urlsafe(24)
PARENT_TOKEN = "parent-" + secrets.token_urlsafe(24)
FIELDS = {"name", "state", "pid", "uptime", "cpu_percent", "memory_mb", "error",
          "last_updated"}


def running(doc: dict[str, Any], *cids: str) -> bool:
    comps = doc["components"]
    return all(comps.get(cid, {}).get("state") == "running" for cid in cids)


def parent_of(fleet: Fleet, *children: Any, **server: object) -> Any:
    remotes = "".join(remote_table(c.name, c.url, token=CHILD_TOKEN) for c in children)
    return fleet.start("parent", component_table("p") + remotes, token=PARENT_TOKEN, **server)


def named(srv: Any, name: str) -> Any:
    srv.name = name
    return srv


async def test_parent_shows_both_children_as_name_slash_id(fleet: Fleet) -> None:
    one = named(fleet.start("one", component_table("a") + component_table("b"),
                            token=CHILD_TOKEN), "one")
    two = named(fleet.start("two", component_table("a"), token=CHILD_TOKEN), "two")
    parent = parent_of(fleet, one, two)
    doc = await watch(parent, lambda d: running(d, "p", "one/a", "one/b", "two/a"))

    assert set(doc["components"]) == {"p", "one/a", "one/b", "two/a"}
    for cid in ("one/a", "one/b", "two/a"):
        comp = doc["components"][cid]
        assert FIELDS <= set(comp)
        assert comp["host"] == cid.split("/")[0]
        assert isinstance(comp["pid"], int)
    assert "host" not in doc["components"]["p"]
    # The top-level metrics stay this machine's; each host's are under hosts.
    assert set(doc["hosts"]) == {"one", "two"}
    for name in ("one", "two"):
        host = doc["hosts"][name]
        assert host["state"] == "connected"
        assert host["error"] is None
        assert host["last_snapshot"].endswith("Z")
        assert set(host["metrics"]) == set(doc["metrics"])
        assert host["instance"] and host["instance"] != doc["instance"]
    # No token of a child reaches the parent's clients or its output.
    async with httpx.AsyncClient() as client:
        status = await client.get(parent.url + "/api/status", headers=parent.auth())
    assert CHILD_TOKEN not in status.text
    assert CHILD_TOKEN not in parent.all_logs()


async def test_stop_start_and_logs_pass_through_the_parent(fleet: Fleet) -> None:
    one = named(fleet.start("one", component_table("a"), token=CHILD_TOKEN), "one")
    parent = parent_of(fleet, one)
    await watch(parent, lambda d: running(d, "one/a"))
    base = parent.url + "/api/components/one%2Fa"
    async with httpx.AsyncClient(timeout=30) as client:
        stopped = await client.post(base + "/stop", headers=parent.auth())
        assert stopped.status_code == 200, stopped.text
        assert stopped.json()["success"] is True
        assert stopped.json()["component"]["id"] == "a"  # the remote's answer, as it was
        assert stopped.json()["component"]["state"] in ("stopping", "stopped")
        await watch(one, lambda d: d["components"]["a"]["state"] == "stopped")
        await watch(parent, lambda d: d["components"]["one/a"]["state"] == "stopped")

        started = await client.post(base + "/start", headers=parent.auth())
        assert started.status_code == 200, started.text
        await watch(parent, lambda d: running(d, "one/a"))

        logs = await client.get(base + "/logs", params={"lines": 5}, headers=parent.auth())
        assert logs.status_code == 200, logs.text
        assert logs.json()["component"] == "a"
        assert len(logs.json()["lines"]) <= 5

        # The parent's own token is still needed; the remote's answers pass back.
        refused = await client.post(base + "/stop")
        assert refused.status_code == 401
        missing = await client.post(parent.url + "/api/components/one%2Fnope/stop",
                                    headers=parent.auth())
        assert missing.status_code == 404
        assert "nope" in missing.json()["error"]
        unknown = await client.post(parent.url + "/api/components/three%2Fa/stop",
                                    headers=parent.auth())
        assert unknown.status_code == 404
        # Local components are untouched by the pass-through routes.
        local = await client.get(parent.url + "/api/components/p/logs", headers=parent.auth())
        assert local.status_code == 200 and local.json()["component"] == "p"
    assert CHILD_TOKEN not in parent.all_logs()


async def test_a_chain_shows_b_slash_c_and_control_goes_along_it(fleet: Fleet) -> None:
    c = named(fleet.start("c", component_table("x"), token=CHILD_TOKEN), "c")
    b = named(fleet.start("b", component_table("y") + remote_table("c", c.url, token=CHILD_TOKEN),
                          token=CHILD_TOKEN), "b")
    a = parent_of(fleet, b)
    doc = await watch(a, lambda d: running(d, "b/y", "b/c/x"))
    assert doc["components"]["b/c/x"]["host"] == "b/c"
    assert doc["hosts"]["b"]["state"] == "connected"
    assert doc["hosts"]["b/c"]["state"] == "connected"
    async with httpx.AsyncClient(timeout=30) as client:
        stopped = await client.post(a.url + "/api/components/b%2Fc%2Fx/stop", headers=a.auth())
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["component"]["state"] in ("stopping", "stopped")
    await watch(c, lambda d: d["components"]["x"]["state"] == "stopped")
    await watch(a, lambda d: d["components"]["b/c/x"]["state"] == "stopped")


async def test_a_wrong_remote_token_is_reported_and_nothing_crashes(fleet: Fleet) -> None:
    one = named(fleet.start("one", component_table("a"), token=CHILD_TOKEN), "one")
    wrong = "wrong-" + secrets.token_urlsafe(24)
    parent = fleet.start("parent", component_table("p") + remote_table("one", one.url,
                                                                        token=wrong),
                         token=PARENT_TOKEN)
    doc = await watch(parent, lambda d: d["hosts"]["one"]["error"] is not None)
    assert "refused our token (HTTP 401)" in doc["hosts"]["one"]["error"]
    assert "remotes.one.token" in doc["hosts"]["one"]["error"]
    assert doc["hosts"]["one"]["state"] == "reconnecting"
    assert running(doc, "p") and "one/a" not in doc["components"]
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(parent.url + "/api/components/one%2Fa/stop",
                                   headers=parent.auth())
    assert answer.status_code == 401  # the remote's own answer, passed back
    assert parent.alive() and one.alive()
    assert wrong not in parent.all_logs()
    assert wrong not in answer.text


async def test_scale_passes_through_the_parent(fleet: Fleet) -> None:
    one = named(fleet.start("one", component_table("w", instances=1), token=CHILD_TOKEN),
                "one")
    parent = parent_of(fleet, one)
    await watch(parent, lambda d: running(d, "one/w.0"))
    url = parent.url + "/api/components/one%2Fw/scale"
    async with httpx.AsyncClient(timeout=30) as client:
        scaled = await client.post(url, json={"instances": 3}, headers=parent.auth())
        assert scaled.status_code == 200, scaled.text
        assert scaled.json()["component"]["instances"] == 3  # the remote's answer
        await watch(parent, lambda d: running(d, "one/w.0", "one/w.1", "one/w.2"))
        doc = await watch(parent, lambda d: d["components"]["one/w.2"].get("pid"))
        assert doc["components"]["one/w.2"]["instance_of"] == "w"
        # The remote's refusals come back as they were.
        bad = await client.post(url, json={"instances": -1}, headers=parent.auth())
        assert bad.status_code == 400 and "got -1" in bad.json()["error"]
        refused = await client.post(url, json={"instances": 1})
        assert refused.status_code == 401
