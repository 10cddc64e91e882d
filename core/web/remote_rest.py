"""Control and logs of a remote's components, passed through to the remote.

`POST /api/components/NAME%2FID/stop` (start, restart, scale with its body) and
`GET /api/components/NAME%2FID/logs` go to remote NAME as
`/api/components/ID/...` with the remote's token; its answer comes back as
it was (status, body, content type). `ID` may itself hold a `/` (a chain:
`B/C/x` is sent to B as `C%2Fx`, and B sends it on to C). The local token
and cookies are never sent on; the remote's token never comes back.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from core.federation import Federation
from core.hub import Hub
from core.instances import ScaleError
from core.web.head import error_body
from core.web.rest import scale_body

log = logging.getLogger(__name__)

#: Seconds for the remote's answer (a stop may wait for its component's
#: stop_timeout), and for the connection.
CONTROL_TIMEOUT, CONNECT_TIMEOUT = 60.0, 5.0
#: Headers of the remote's answer passed back as they were.
_PASSED_BACK = ("content-type", "retry-after")


def _refusal(status: int, message: str) -> Response:
    return Response(error_body(message), status_code=status, media_type="application/json")


class _RemoteRoute(Route):
    """A route that matches only component ids holding a "/" (a remote's)."""

    def matches(self, scope: Any) -> tuple[Match, Any]:
        match, child = super().matches(scope)
        if match is Match.NONE or "/" not in child["path_params"].get("cid", ""):
            return Match.NONE, {}
        return match, child


class RemoteControl:
    """Forwards one request to the remote named by the component id's first part."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def forward(self, request: Request) -> Response:
        cid: str = request.path_params["cid"]
        action = request.url.path.rsplit("/", 1)[-1]
        name, rest = cid.split("/", 1)
        federation = self.hub.extender
        remote = federation.remote(name) if isinstance(federation, Federation) else None
        if remote is None or not rest:
            return _refusal(404, f"no component with id {cid!r}")
        assert isinstance(federation, Federation)
        hung = federation.hung(name)
        if hung is not None:  # a stopped machine takes the connection and never answers
            return _refusal(502, hung)
        url = f"{remote.url}/api/components/{quote(rest, safe='')}/{action}"
        params = dict(request.query_params) if request.method == "GET" else None
        try:
            body = await scale_body(request) if action == "scale" else None
        except ScaleError as exc:
            return _refusal(400, str(exc))
        sent = remote.headers() if body is None else {
            **remote.headers(), "content-type": "application/json"}
        import httpx  # here: a Control Center that follows no remote never loads it

        try:
            async with httpx.AsyncClient(verify=federation.ssl_context(name) or True,
                                         timeout=httpx.Timeout(CONTROL_TIMEOUT,
                                                               connect=CONNECT_TIMEOUT)
                                         ) as client:
                answer = await client.request(request.method, url, params=params,
                                              headers=sent, content=body)
        except httpx.HTTPError as exc:
            # The URL holds no token; the message names what failed.
            message = f"host {name} unreachable: {type(exc).__name__}: {exc or 'no answer'}"
            log.info("%s %s: %s", request.method, request.url.path, message)
            return _refusal(502, message)
        headers = {k: v for k, v in answer.headers.items() if k.lower() in _PASSED_BACK}
        return Response(answer.content, status_code=answer.status_code, headers=headers)

    def routes(self) -> list[Route]:
        return [
            *(_RemoteRoute(f"/api/components/{{cid:path}}/{action}", self.forward,
                           methods=["POST"])
              for action in ("start", "stop", "restart", "scale")),
            _RemoteRoute("/api/components/{cid:path}/logs", self.forward, methods=["GET"]),
        ]
