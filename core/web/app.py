"""The ASGI application on port 9000: page, REST, metrics and `/ws`.

`/ws` goes straight to the fan-out, outside Starlette: its per-send
wrappers would be paid 1000s of times per tick. Everything HTTP goes
through Starlette behind one guard (origin, token, control rate limit),
so handlers stay about their endpoint alone.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from importlib import metadata
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from core.config import ServerConfig
from core.events import KINDS as EVENT_KINDS
from core.events import parse_since
from core.hub import Hub
from core.identity import required_role
from core.web import openapi
from core.web.remote_rest import RemoteControl
from core.web.rest import Handlers, error
from core.web.security import (
    Auth,
    Denied,
    RateLimiter,
    host_ok,
    host_refusal,
    origin_ok,
    request_token,
)
from core.web.supervisor_api import SupervisorAPI
from core.web.ws import Fanout

__all__ = ["SupervisorAPI", "build_app"]

STATIC_DIR = Path(__file__).parent / "static"


def version() -> str:
    try:
        return metadata.version("control-center")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


#: Sent with every HTTP response. The page loads only its own scripts and
#: styles and talks only to its own origin (CSP 3 'self' covers ws: and
#: wss: to the same host); no other page may frame it (a click in a frame
#: on another local page could otherwise press its buttons).
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
     b"frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class Guard:
    """Refuses before any handler runs: cross-origin POSTs, missing token, floods."""

    def __init__(self, app: Any, server: ServerConfig, auth: Auth) -> None:
        self.app = app
        self.server = server
        self.auth = auth
        self.control = RateLimiter(server.control_rate)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        path, method = scope["path"], scope["method"]
        client = scope.get("client")
        address = str(client[0]) if client else "?"
        refusal: Response | None = None
        if not host_ok(request.headers.get("host"), self.server.allowed_hosts):
            refusal = error(403, host_refusal(request.headers.get("host")))
        elif "transfer-encoding" in request.headers and "content-length" in request.headers:
            # RFC 9112 6.3: a proxy in front may frame the body by the other
            # header (request smuggling). Refuse and close the connection;
            # h11 alone would answer and go on reading it.
            refusal = error(400, "both Content-Length and Transfer-Encoding: send one")
            refusal.headers["Connection"] = "close"
        elif method == "POST" and not origin_ok(
                request.headers.get("origin"), scheme=scope.get("scheme", "http"),
                host=request.headers.get("host"), allowed=self.server.allowed_origins):
            refusal = error(403, "cross-origin request refused (see [server] allowed_origins)")
        elif (refusal := self._authorize(scope, request, address)) is not None:
            pass
        elif method == "POST" and path.startswith("/api/"):
            if not self.control.allow(address):
                refusal = error(429, f"too many control requests (more than "
                                     f"{self.server.control_rate:g}/s); retry shortly")
                refusal.headers["Retry-After"] = "1"
        async def send_secured(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()),
                                                  *SECURITY_HEADERS]}
            await send(message)

        if refusal is not None:
            await refusal(scope, receive, send_secured)
            return
        await self.app(scope, receive, send_secured)


    def _authorize(self, scope: dict[str, Any], request: Request, address: str
                   ) -> Response | None:
        """None when the caller may; else the refusal. The identity goes in the scope."""
        need = required_role(scope["method"], scope["path"])
        try:
            identity = self.auth.authorize(request_token(request.headers), address, need)
        except Denied as denied:
            refusal = error(denied.status, denied.message if denied.status != 401 else
                            f"{denied.message}: send 'Authorization: Bearer <token>'")
            if denied.status == 429:
                refusal.headers["Retry-After"] = "5"
            elif denied.status == 401:
                refusal.headers["WWW-Authenticate"] = "Bearer"
            return refusal
        scope.setdefault("state", {})["identity"] = identity
        return None


class Root:
    """What reaches hypercorn: HTTP to Starlette; a WebSocket upgrade is refused.

    `/ws` upgrades are taken by the accept loop before hypercorn sees the
    connection; one arriving here came as a later request of a keep-alive
    connection, or for another path.
    """

    def __init__(self, http_app: Any) -> None:
        self.http_app = http_app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            if scope["path"] == "/ws":
                refusal = error(400, "a WebSocket upgrade must be the first request of "
                                     "its connection")
            else:
                refusal = error(404, f"no WebSocket endpoint at {scope['path']}; use /ws")
            await WebSocket(scope, receive, send).send_denial_response(refusal)
            return
        await self.http_app(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, str(exc.detail))


async def _server_error(request: Request, exc: Exception) -> Response:
    return error(500, f"internal error: {type(exc).__name__}")


def build_app(supervisor: SupervisorAPI | None, hub: Hub, server: ServerConfig,
              fanout: Fanout, notifiers: list[Any] | None = None) -> Root:
    """The HTTP side of port 9000 (everything but `/ws`), guarded like `/ws`."""
    handlers = Handlers(supervisor, hub, fanout.events)  # type: ignore[arg-type]  # None: tests
    # prometheus_client (2.5 MB) is imported by the first GET /metrics.
    registry: list[Any] = []
    spec = openapi.document(version())
    info = {"version": version(), "interval": hub.interval,
            "auth_required": fanout.auth.required, "max_clients": server.max_clients}

    async def index(request: Request) -> Response:
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            return error(404, "the dashboard page is not installed")
        return FileResponse(page, media_type="text/html; charset=utf-8")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def api_info(request: Request) -> Response:
        return JSONResponse(info)

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(spec)

    keys = fanout.signer.jwks if fanout.signer is not None else {"keys": []}

    async def api_keys(request: Request) -> Response:
        return JSONResponse(keys)

    async def api_events(request: Request) -> Response:
        params = request.query_params
        try:
            since = parse_since(params["since"]) if "since" in params else None
            limit = int(params.get("limit", "100"))
        except ValueError as exc:
            return error(400, str(exc))
        if not 1 <= limit <= 10_000:
            return error(400, f"limit: expected an integer from 1 to 10000, got {limit}")
        kind = params.get("kind")
        if kind is not None and kind not in EVENT_KINDS:
            return error(400, f"kind: expected one of {', '.join(EVENT_KINDS)}, got {kind!r}")
        if fanout.events is None:
            return JSONResponse({"events": []})
        found = await fanout.events.query(since=since, component=params.get("component"),
                                          kind=kind, limit=limit)
        return JSONResponse({"events": [e.as_dict() for e in found]})

    async def prometheus(request: Request) -> Response:
        from core.web import metrics

        if not registry:
            registry.append(metrics.make_registry(hub, lambda: len(fanout.clients),
                                                  fanout.events, notifiers))
        return Response(metrics.render(registry[0]), media_type=metrics.CONTENT_TYPE)

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/api/info", api_info, methods=["GET"]),
        Route("/api/keys", api_keys, methods=["GET"]),
        Route("/api/events", api_events, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        *RemoteControl(hub).routes(),  # NAME/ID: a remote's component, before the local ones
        *handlers.routes(),
        Mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
    ]
    http_app = Starlette(routes=routes, exception_handlers={
        HTTPException: _http_error, Exception: _server_error})
    return Root(Guard(http_app, server, fanout.auth))
