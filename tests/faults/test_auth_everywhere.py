"""Token and origin on every endpoint the server documents, and on /ws.

The list of endpoints comes from the server's own `/openapi.json`, so an
endpoint added later is covered without touching this file; a REST route
missing from the document is caught here too.
"""

from __future__ import annotations

import ast
import http.client
import inspect
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import core.web
from core.web import security

from .conftest import CoreServer, component_table, handshake, serving

TOKEN = "tk-" + secrets.token_urlsafe(24)
WRONG = {
    "none": None,
    "another token": "Bearer not-the-token",
    "one character short": "Bearer " + TOKEN[:-1],
    "one character more": "Bearer " + TOKEN + "x",
    "upper case": "Bearer " + TOKEN.upper(),
    "empty bearer": "Bearer ",
    "basic scheme": "Basic " + TOKEN,
    "bare token": TOKEN,
}
#: Public by contract: no token needed.
PUBLIC = {("get", "/api/info"), ("get", "/healthz"), ("get", "/api/keys")}
FOREIGN = "http://evil.example"


def request(srv: CoreServer, method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request(method.upper(), path, body=body if method.lower() == "post" else None,
                     headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoreServer]:
    # autostart = false: control requests then do not start and stop real children.
    with serving(tmp_path_factory.mktemp("auth"), component_table("a", autostart=False),
                 interval=0.5, token=TOKEN, control_rate=1000.0,
                 auth_failure_rate=1000.0) as server:
        yield server


def _operations(srv: CoreServer) -> list[tuple[str, str]]:
    status, _, body = request(srv, "get", "/openapi.json")
    assert status == 200
    spec = json.loads(body)
    found = [(m, p.replace("{cid}", "a")) for p, ops in spec["paths"].items() for m in ops
             if m in ("get", "post", "put", "patch", "delete")]
    assert len(found) >= 10, found  # the document lists the API, not a stub
    return found


def test_every_documented_endpoint_refuses_a_missing_or_wrong_token(srv):
    guarded = [op for op in _operations(srv) if op not in PUBLIC]
    assert ("post", "/api/components/a/restart") in guarded
    assert ("get", "/metrics") in guarded
    for method, path in guarded:
        for name, auth in WRONG.items():
            status, headers, body = request(srv, method, path,
                                            {"Authorization": auth} if auth else {})
            assert status == 401, (method, path, name, status, body)
            assert headers["content-type"] == "application/json", (method, path)
            assert json.loads(body)["success"] is False
            assert headers.get("www-authenticate", "").startswith("Bearer")
        # A token in the URL is for the WebSocket only (URLs end up in logs).
        status, _, _ = request(srv, method, f"{path}?token={TOKEN}")
        assert status == 401, (method, path, "query token")
        status, _, body = request(srv, method, path, srv.auth())
        assert status not in (401, 403), (method, path, status, body)


def test_every_rest_route_is_in_the_document(srv):
    from core.web.rest import Handlers

    documented = {(m, p) for m, p in _operations(srv)}
    for route in Handlers(None, None).routes():
        for method in route.methods or ():
            if method != "HEAD":
                path = route.path.replace("{cid}", "a")
                assert (method.lower(), path) in documented, (method, route.path)


def test_public_endpoints_need_no_token_and_reveal_none(srv):
    for method, path in PUBLIC | {("get", "/"), ("get", "/static/app.js")}:
        status, _, body = request(srv, method, path)
        assert status == 200, (method, path, status)
        assert TOKEN.encode() not in body
    status, _, body = request(srv, "get", "/api/info")
    assert json.loads(body)["auth_required"] is True


def test_foreign_origin_is_refused_on_every_post(srv):
    posts = [p for m, p in _operations(srv) if m == "post"]
    assert "/api/reload" in posts
    for path in posts:
        for origin in (FOREIGN, f"http://127.0.0.1:{srv.port}.evil.example", "null",
                       f"https://127.0.0.1:{srv.port}"):
            status, _, body = request(srv, "post", path, {**srv.auth(), "Origin": origin})
            assert status == 403, (path, origin, status, body)
            assert json.loads(body)["success"] is False
        own = {**srv.auth(), "Origin": f"http://127.0.0.1:{srv.port}"}
        # scale is the one POST with a body: {"instances": 1} leaves `a` as it is.
        sent = b'{"instances": 1}' if path.endswith("/scale") else b""
        status, _, body = request(srv, "post", path, own, sent)
        assert status == 200, (path, status, body)


def _ws_status(srv: CoreServer, query: str = "", headers: dict[str, str] | None = None) -> int:
    """101 when /ws accepted the handshake, else the HTTP status it refused with.

    A raw handshake: trio-websocket leaves the socket of a refused handshake
    open (a ResourceWarning under -W error).
    """
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    sock, head, _ = handshake(srv.port, path=f"/ws{query}", extra=extra)
    sock.close()
    return int(head.split(" ", 2)[1])


def test_websocket_handshake_needs_the_token_and_an_allowed_origin(srv):
    assert _ws_status(srv) == 401
    for name, auth in WRONG.items():
        if auth is not None:
            assert _ws_status(srv, headers={"Authorization": auth}) == 401, name
    for wrong in ("", "nope", TOKEN[:-1], TOKEN + "x", TOKEN.upper()):
        assert _ws_status(srv, f"?token={wrong}") == 401, wrong
    assert _ws_status(srv, f"?token={TOKEN}") == 101
    assert _ws_status(srv, headers={"Authorization": f"Bearer {TOKEN}"}) == 101
    own = {"Origin": f"http://127.0.0.1:{srv.port}"}
    assert _ws_status(srv, f"?token={TOKEN}", own) == 101
    for origin in (FOREIGN, "null", f"http://127.0.0.1:{srv.port}.evil.example"):
        assert _ws_status(srv, f"?token={TOKEN}", {"Origin": origin}) == 403, origin
        # Origin is checked even without a token: refused either way.
        assert _ws_status(srv, "", {"Origin": origin}) in (401, 403), origin


def test_the_token_never_reaches_the_logs(srv):
    # Right and wrong tokens, in headers and in the WebSocket URL.
    for auth in [*[a for a in WRONG.values() if a], f"Bearer {TOKEN}"]:
        request(srv, "get", "/api/status", {"Authorization": auth})
        request(srv, "post", "/api/components/a/restart", {"Authorization": auth})
    _ws_status(srv, f"?token={TOKEN}")
    _ws_status(srv, f"?token={TOKEN}x")
    logs = srv.all_logs()
    assert "restart" in logs.lower() or "a:" in logs  # the logs are the real ones
    for secret in (TOKEN, TOKEN[:-1], TOKEN.upper()):
        assert secret not in logs


def _token_comparisons(tree: ast.AST) -> list[str]:
    """`==`/`!=` comparisons with something named like a token (not constant time)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq)
                                                 for op in node.ops):
            for side in [node.left, *node.comparators]:
                names = {n.id for n in ast.walk(side) if isinstance(n, ast.Name)}
                names |= {n.attr for n in ast.walk(side) if isinstance(n, ast.Attribute)}
                if any("token" in n.lower() or n in ("given", "expected") for n in names):
                    found.append(ast.unparse(node))
                    break
    return found


def test_the_token_is_compared_in_constant_time():
    source = inspect.getsource(security.token_ok)
    assert "compare_digest" in source
    assert not _token_comparisons(ast.parse(inspect.getsource(security.token_ok).strip()))
    # Every check of the web layer goes through Auth.authorize, which uses
    # token_ok (JSON Web Tokens: PyJWT); none compares by hand.
    assert "token_ok(" in inspect.getsource(security.Auth._identify)
    web = Path(core.web.__file__).parent
    callers: dict[str, Any] = {}
    for path in sorted(web.glob("*.py")):
        tree = ast.parse(path.read_text())
        assert not _token_comparisons(tree), (path.name, _token_comparisons(tree))
        callers[path.name] = "auth.authorize(" in path.read_text()
    assert callers["app.py"] and callers["ws.py"], callers


def test_the_comparison_check_catches_a_plain_equality():
    # The AST check above must be able to fail.
    bad = ast.parse("def token_ok(expected, given):\n    return given == expected\n")
    assert _token_comparisons(bad) == ["given == expected"]
