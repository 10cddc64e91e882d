"""Who may do what: JSON Web Tokens with roles on every endpoint, and on /ws.

A real `python -m core` with `[auth] jwt_secret`; tokens minted by
`python -m core token`. The role matrix walks /openapi.json, so an endpoint
added without its role is caught.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from trio_websocket import ConnectionClosed

from core.identity import AuthConfig, mint

from .conftest import CoreServer, component_table, serving, ws_client

SECRET = "s" * 16 + "-a-secret-of-32+chars"
ROLES = ("viewer", "operator", "admin")
AUTH = f'\n[auth]\njwt_secret = "{SECRET}"\njwt_issuer = "tests"\n'


def request(srv: CoreServer, method: str, path: str, token: str | None
            ) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request(method, path, body=b"" if method == "POST" else None, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        is_json = (resp.getheader("content-type") or "").startswith("application/json")
        return resp.status, json.loads(body) if is_json else {}
    finally:
        conn.close()


def cli_token(config: Path, role: str, ttl: str = "1h", *extra: str) -> str:
    sub = [] if "--sub" in extra else ["--sub", f"{role}-tester"]
    out = subprocess.run([sys.executable, "-m", "core", "token", "--role", role, "--ttl", ttl,
                          *sub, "--config", str(config), *extra],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoreServer]:
    tmp = tmp_path_factory.mktemp("roles")
    with serving(tmp, component_table("a", autostart=False) + AUTH, interval=0.5,
                 control_rate=1000.0, auth_failure_rate=1000.0) as server:
        yield server


@pytest.fixture(scope="module")
def tokens(srv: CoreServer) -> dict[str, str]:
    found = {role: cli_token(srv.config_path, role) for role in ROLES}
    config = AuthConfig(jwt_secret=SECRET, jwt_issuer="tests")
    found["expired"] = mint(config, role="admin", ttl=60, sub="late", now=time.time() - 120)
    found["wrong key"] = mint(AuthConfig(jwt_secret="x" * 40, jwt_issuer="tests"),
                              role="admin", ttl=60, sub="forger")
    found["wrong issuer"] = mint(AuthConfig(jwt_secret=SECRET, jwt_issuer="elsewhere"),
                                 role="admin", ttl=60, sub="x")
    body = mint(config, role="admin", ttl=60, sub="x").split(".")
    body[1] = body[1][:-2] + ("AA" if body[1][-2:] != "AA" else "BB")
    found["tampered"] = ".".join(body)
    found["malformed"] = "not-a-jwt"
    return found


def operations(srv: CoreServer) -> list[tuple[str, str, str | None]]:
    status, spec = request(srv, "GET", "/openapi.json", None)
    assert status == 200
    found = [(m.upper(), p.replace("{cid}", "a"), op["x-required-role"])
             for p, ops in spec["paths"].items() for m, op in ops.items()]
    assert {role for _, _, role in found} == {None, *ROLES}, found
    return found


def test_every_endpoint_with_every_role(srv, tokens):
    rank = {role: i for i, role in enumerate(ROLES)}
    for method, path, need in operations(srv):
        for role in ROLES:
            status, body = request(srv, method, path, tokens[role])
            if need is None or rank[role] >= rank[need]:
                assert status not in (401, 403), (method, path, role, status, body)
            else:
                assert status == 403, (method, path, role, status, body)
                assert f"needs the role {need}" in body["error"], body
        status, _ = request(srv, method, path, None)
        assert (status == 401) == (need is not None), (method, path, status)


@pytest.mark.parametrize(("name", "reason"), [
    ("expired", "token expired"), ("wrong key", "signature does not verify"),
    ("wrong issuer", "issuer"), ("tampered", "signature does not verify"),
    ("malformed", "malformed token")])
def test_a_bad_token_is_401_with_the_reason(srv, tokens, name, reason):
    status, body = request(srv, "GET", "/api/status", tokens[name])
    assert status == 401 and reason in body["error"], (status, body)
    status, _ = request(srv, "POST", "/api/components/a/start", tokens[name])
    assert status == 401


def test_the_websocket_closes_1008_at_the_tokens_exp(srv):
    token = cli_token(srv.config_path, "viewer", "3s")
    exp = json.loads(__import__("base64").urlsafe_b64decode(
        token.split(".")[1] + "==").decode())["exp"]

    async def main() -> tuple[int, str, float, int]:
        async with ws_client(f"{srv.ws_url}?token={token}") as ws:
            got = 0
            with trio.fail_after(10):
                while True:
                    try:
                        await ws.get_message()
                        got += 1
                    except ConnectionClosed as exc:
                        return exc.reason.code, exc.reason.reason or "", time.time(), got
        raise AssertionError("unreachable")

    code, reason, closed_at, got = trio.run(main)
    assert (code, reason) == (1008, "token expired")
    assert got >= 2  # it was streaming until then
    assert exp - 0.5 <= closed_at <= exp + 1.5, (exp, closed_at)


def test_viewer_may_watch_but_not_control(srv, tokens):
    async def main() -> dict:
        async with ws_client(f"{srv.ws_url}?token={tokens['viewer']}") as ws:
            return json.loads(await ws.get_message())

    assert "components" in trio.run(main)
    status, body = request(srv, "POST", "/api/components/a/stop", tokens["viewer"])
    assert status == 403 and "operator" in body["error"]
    status, body = request(srv, "POST", "/api/reload", tokens["operator"])
    assert status == 403 and "admin" in body["error"]


def test_an_ed25519_public_key_verifies_tokens_signed_elsewhere(tmp_path):
    private = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "private.pem").write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tmp_path / "public.pem").write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    auth = f'\n[auth]\njwt_public_key = "{tmp_path / "public.pem"}"\n'
    with serving(tmp_path, component_table("a") + auth) as srv:
        token = cli_token(srv.config_path, "operator", "5m", "--key", str(tmp_path / "private.pem"))
        assert request(srv, "GET", "/api/status", token)[0] == 200
        assert request(srv, "GET", "/api/status", None)[0] == 401
        # Without the private key nothing can be minted for a public-key config.
        out = subprocess.run([sys.executable, "-m", "core", "token", "--role", "viewer",
                              "--config", str(srv.config_path)], capture_output=True, text=True)
        assert out.returncode == 2 and "--key" in out.stderr


def test_the_static_token_still_means_admin(tmp_path):
    static = "a-static-token-long-enough"
    with serving(tmp_path, component_table("a", autostart=False) + AUTH, token=static) as srv:
        assert request(srv, "POST", "/api/reload", static)[0] == 200
        assert request(srv, "POST", "/api/reload", "nope")[0] == 401


def test_the_audit_trail_names_who_stopped_a_component(srv):
    alice = cli_token(srv.config_path, "operator", "10m", "--sub", "alice")

    async def main() -> dict:
        async with ws_client(f"{srv.ws_url}?token={alice}") as ws:
            await ws.send_message(json.dumps({"type": "subscribe", "events": True}))
            status, _ = await trio.to_thread.run_sync(
                request, srv, "POST", "/api/components/a/stop", alice)
            assert status == 200
            with trio.fail_after(10):
                while True:
                    doc = json.loads(await ws.get_message())
                    if doc.get("type") == "event" and doc["kind"] == "control":
                        return doc

    pushed = trio.run(main)
    assert pushed["actor"] == "alice" and pushed["action"] == "stop"
    # The store writes behind /ws (in batches, from a thread): on a busy
    # machine the query may come first. Bounded: 10 s.
    deadline = time.monotonic() + 10
    while True:
        status, body = request(srv, "GET", "/api/events?kind=control&component=a", alice)
        assert status == 200
        last = body["events"][-1]
        if last["id"] >= pushed["id"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert (last["actor"], last["action"], last["component"]) == ("alice", "stop", "a")
    assert last["address"] == "127.0.0.1" and last["result"].startswith("ok")
