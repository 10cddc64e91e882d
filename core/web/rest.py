"""REST handlers: translate requests into supervisor calls, errors into statuses.

No lifecycle logic lives here (the supervisor serialises and de-duplicates
start/stop/restart); a handler parses its parameters, calls one method and
shapes the answer as the contract says.
"""

from __future__ import annotations

import json
from contextlib import aclosing
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.errors import ConfigError, OptionError, ShuttingDown, UnknownComponent
from core.events import EventLog
from core.hub import Hub
from core.instances import ScaleError, check_count
from core.web.head import error_body
from core.web.supervisor_api import SupervisorAPI

#: The largest body a scale request may have, in bytes ({"instances": 1000} is 17).
SCALE_BODY_MAX = 1024
#: `lines=` of the logs endpoint: default and maximum.
LOG_LINES_DEFAULT = 200
LOG_LINES_MAX = 5000


def error(status: int, message: str) -> Response:
    """A JSON refusal, the same body as every other refusal on port 9000."""
    return Response(error_body(message), status_code=status, media_type="application/json")


def _int_param(request: Request, name: str, default: int | None, lo: int,
               hi: float = float("inf")) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPException(400, f"{name}: expected an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        expected = f"from {lo} to {hi}" if hi != float("inf") else f">= {lo}"
        raise HTTPException(400, f"{name}: expected an integer {expected}, got {value}")
    return value


def _bool_param(request: Request, name: str) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return False
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise HTTPException(400, f"{name}: expected true or false, got {raw!r}")


def _float_param(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise HTTPException(400, f"{name}: expected a number, got {raw!r}") from None
    if not value >= 0 or value == float("inf"):  # also refuses NaN
        raise HTTPException(400, f"{name}: expected a number >= 0, got {raw!r}")
    return value


class Handlers:
    """The REST endpoints of one server, bound to its supervisor and hub."""

    def __init__(self, supervisor: SupervisorAPI, hub: Hub, events: EventLog | None = None
                 ) -> None:
        self.sup = supervisor
        self.hub = hub
        self.events = events

    def _component(self, cid: str) -> dict[str, Any]:
        try:
            view = self.sup.view(cid)
        except UnknownComponent:
            raise HTTPException(404, f"no component with id {cid!r}") from None
        return {"id": cid, **view}

    async def status(self, request: Request) -> Response:
        snap = self.hub.latest
        if snap is None:
            return error(503, "no snapshot yet: the supervisor is starting")
        # The text the WebSocket clients get, encoded once at publish.
        return Response(snap.text, media_type="application/json")

    async def components(self, request: Request) -> Response:
        items = []
        for cid in self.sup.component_ids():
            try:
                items.append(self._component(cid))
            except HTTPException:  # removed by a reload meanwhile
                continue
        return JSONResponse({"components": items})

    async def component(self, request: Request) -> Response:
        return JSONResponse(self._component(request.path_params["cid"]))

    async def control(self, request: Request) -> Response:
        cid = request.path_params["cid"]
        action = request.url.path.rsplit("/", 1)[-1]
        method = {"start": self.sup.start, "stop": self.sup.stop,
                  "restart": self.sup.restart}[action]
        kwargs = {"wait": True} if action == "stop" and _bool_param(request, "wait") else {}
        try:
            view = await method(cid, **kwargs)
        except UnknownComponent:
            self._audit(request, action, cid, "unknown component")
            return error(404, f"no component with id {cid!r}")
        except ShuttingDown as exc:
            self._audit(request, action, cid, "refused: shutting down")
            return error(503, str(exc))
        self._audit(request, action, cid, f"ok, now {view.get('state')}")
        return JSONResponse({"success": True, "component": {"id": cid, **view}})

    async def scale(self, request: Request) -> Response:
        cid = request.path_params["cid"]
        try:
            count = check_count(await _scale_body(request))
            view = await self.sup.scale(cid, count)
        except ScaleError as exc:
            self._audit(request, "scale", cid, f"refused: {exc}")
            return error(400, str(exc))
        except UnknownComponent:
            self._audit(request, "scale", cid, "unknown component")
            return error(404, f"no component with id {cid!r}")
        except ShuttingDown as exc:
            self._audit(request, "scale", cid, "refused: shutting down")
            return error(503, str(exc))
        self._audit(request, "scale", cid, f"ok, now {count} instances")
        return JSONResponse({"success": True, "component": {"id": cid, **view}})

    def _audit(self, request: Request, action: str, cid: str | None, result: str) -> None:
        """A control action in the event log: what, on which component, by whom, from where."""
        if self.events is None:
            return
        identity = request.scope.get("state", {}).get("identity")
        client = request.scope.get("client")
        self.events.emit("control", cid, action=action,
                         actor=identity.sub if identity is not None else "anonymous",
                         address=str(client[0]) if client else None, result=result)

    async def logs(self, request: Request) -> Response:
        cid = request.path_params["cid"]
        lines = _int_param(request, "lines", LOG_LINES_DEFAULT, 0, LOG_LINES_MAX)
        after = _int_param(request, "after", None, 0)
        try:
            tail = self.sup.log(cid)
        except UnknownComponent:
            return error(404, f"no component with id {cid!r}")
        assert lines is not None
        found = tail.tail(lines) if after is None else tail.since(after)[-lines:] if lines else []
        return JSONResponse({"component": cid, "lines": [ln.as_dict() for ln in found],
                             "last_seq": tail.last_seq})

    async def history(self, request: Request) -> Response:
        seconds = _float_param(request, "seconds")
        body = (f'{{"interval": {json.dumps(self.hub.interval)}, '
                f'"points": {self.hub.history_json(seconds)}}}')
        return Response(body, media_type="application/json")

    async def reload(self, request: Request) -> Response:
        try:
            result = await self.sup.reload()
        except (ConfigError, OptionError) as exc:
            return error(400, str(exc))
        return JSONResponse({"success": True, **result})

    def routes(self) -> list[Route]:
        return [
            Route("/api/status", self.status, methods=["GET"]),
            Route("/api/components", self.components, methods=["GET"]),
            Route("/api/components/{cid}", self.component, methods=["GET"]),
            *(Route(f"/api/components/{{cid}}/{action}", self.control, methods=["POST"],
                    name=action) for action in ("start", "stop", "restart")),
            Route("/api/components/{cid}/scale", self.scale, methods=["POST"]),
            Route("/api/components/{cid}/logs", self.logs, methods=["GET"]),
            Route("/api/history", self.history, methods=["GET"]),
            Route("/api/reload", self.reload, methods=["POST"]),
        ]


async def scale_body(request: Request) -> bytes:
    """A scale request's body, read up to SCALE_BODY_MAX; ScaleError past it."""
    body = b""
    async with aclosing(request.stream()) as chunks:
        async for chunk in chunks:
            body += chunk
            if len(body) > SCALE_BODY_MAX:
                raise ScaleError(f"the body is larger than {SCALE_BODY_MAX} bytes; send "
                                 '{"instances": N}')
    return body


async def _scale_body(request: Request) -> Any:
    """The `instances` of a scale request's JSON body; ScaleError if there is none."""
    body = await scale_body(request)
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ScaleError('expected a JSON body {"instances": N}') from None
    if not isinstance(doc, dict) or "instances" not in doc:
        raise ScaleError('expected a JSON object with the key "instances": {"instances": N}')
    extra = sorted(k for k in doc if k != "instances")
    if extra:
        raise ScaleError(f"unknown key {extra[0][:40]!r}: send {{\"instances\": N}} alone")
    return doc["instances"]
