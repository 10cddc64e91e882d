"""A small Python client for a running Control Center (REST + the /ws stream).

    async with Client("http://127.0.0.1:9000", token=None) as cc:
        await cc.start("api")                       # -> the component
        async with cc.snapshots() as stream:        # reconnects by itself
            async for doc in stream:
                print(doc["metrics"]["cpu_percent"])

The stream reconnects like the dashboard does (spec/websocket-protocol.md):
3 s, doubling, at most 10 attempts in a row; never after a close with 1000
(normal) or 1008 (policy: the server refused us on purpose).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from core.signing import SignatureError, public_key_of, verify

__all__ = ["ApiError", "Client", "SignatureError", "StreamClosed"]

DEFAULT_URL = "http://127.0.0.1:9000"
#: Reconnection: first delay, factor, attempts (the seed's dashboard values).
BASE_DELAY = 3.0
MAX_ATTEMPTS = 10
#: Seconds for a connection and its handshake: trio-websocket's own 60 s
#: would leave the stream hanging when a server resets it mid-handshake.
CONNECT_TIMEOUT = 10.0
#: Close codes after which reconnecting would only repeat the refusal.
FINAL_CODES = frozenset({1000, 1008})


class ApiError(Exception):
    """The server answered a REST call with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class StreamClosed(Exception):
    """The snapshot stream ended for good (closed 1008, or out of attempts)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"{reason} (close code {code})" if code else reason)
        self.code = code
        self.reason = reason


def ws_url(url: str, token: str | None = None) -> str:
    """The /ws URL of the server at `url` (http -> ws, https -> wss)."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    query = f"token={quote(token, safe='')}" if token else ""
    return urlunsplit((scheme, parts.netloc, "/ws", query, ""))


class Client:
    """REST calls and the snapshot stream of one server."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, *,
                 ssl_context: ssl.SSLContext | None = None, timeout: float = 30.0,
                 verify_key: Any = None) -> None:
        """`verify_key`: the server's snapshot key (an Ed25519 public key, a PEM file,
        or the JWKS of GET /api/keys); then `snapshots()` asks for signed snapshots and
        raises SignatureError for one that does not verify."""
        self.url = url.rstrip("/")
        self.token = token
        self.verify_key = None if verify_key is None else public_key_of(verify_key)
        self.ssl_context = ssl_context
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout,
                                       verify=ssl_context if ssl_context is not None else True)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- REST ----------------------------------------------------------------

    async def _call(self, method: str, path: str, *, json: Any = None, **params: Any) -> Any:
        query = {k: v for k, v in params.items() if v is not None}
        response = await self._http.request(method, path, params=query, json=json)
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            message = body.get("error") if isinstance(body, dict) else None
            raise ApiError(response.status_code, message or response.text[:200])
        return body

    async def status(self) -> dict[str, Any]:
        return await self._call("GET", "/api/status")

    async def components(self) -> list[dict[str, Any]]:
        return (await self._call("GET", "/api/components"))["components"]

    async def component(self, cid: str) -> dict[str, Any]:
        return await self._call("GET", f"/api/components/{quote(cid, safe='')}")

    async def _control(self, cid: str, action: str, **params: Any) -> dict[str, Any]:
        body = await self._call("POST", f"/api/components/{quote(cid, safe='')}/{action}",
                                **params)
        return body["component"]

    async def start(self, cid: str) -> dict[str, Any]:
        return await self._control(cid, "start")

    async def stop(self, cid: str, *, wait: bool = False) -> dict[str, Any]:
        """With `wait`, the answer comes once the component is stopped, not stopping."""
        return await self._control(cid, "stop", wait="true" if wait else None)

    async def restart(self, cid: str) -> dict[str, Any]:
        return await self._control(cid, "restart")

    async def scale(self, cid: str, instances: int) -> dict[str, Any]:
        """Run `instances` processes of `cid` (until the server's next reload)."""
        body = await self._call("POST", f"/api/components/{quote(cid, safe='')}/scale",
                                json={"instances": instances})
        return body["component"]

    async def logs(self, cid: str, *, lines: int | None = None,
                   after: int | None = None) -> dict[str, Any]:
        return await self._call("GET", f"/api/components/{quote(cid, safe='')}/logs",
                                lines=lines, after=after)

    async def history(self, seconds: float | None = None) -> dict[str, Any]:
        return await self._call("GET", "/api/history", seconds=seconds)

    async def reload(self) -> dict[str, Any]:
        return await self._call("POST", "/api/reload")

    async def info(self) -> dict[str, Any]:
        return await self._call("GET", "/api/info")

    # -- the stream ------------------------------------------------------------

    @asynccontextmanager
    async def snapshots(self, *, components: Iterable[str] | None = None,
                        metrics: Iterable[str] | None = None, base_delay: float = BASE_DELAY,
                        max_attempts: int = MAX_ATTEMPTS
                        ) -> AsyncIterator[trio.MemoryReceiveChannel[dict[str, Any]]]:
        """A channel of snapshot documents, following reconnections.

        The channel ends after a close with 1000; it raises StreamClosed
        after 1008 or when `max_attempts` connections in a row failed.
        """
        subscribe = None
        if components is not None or metrics is not None or self.verify_key is not None:
            msg: dict[str, Any] = {"type": "subscribe"}
            if self.verify_key is not None:
                msg["signed"] = True
            if components is not None:
                msg["components"] = list(components)
            if metrics is not None:
                msg["metrics"] = list(metrics)
            subscribe = json.dumps(msg)
        send, receive = trio.open_memory_channel[dict[str, Any]](0)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._follow, send, subscribe, base_delay, max_attempts)
                async with receive:
                    yield receive
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # One failure (ours or the caller's) is raised as itself.
            if len(group.exceptions) == 1 and not isinstance(group.exceptions[0],
                                                             BaseExceptionGroup):
                raise group.exceptions[0] from None
            raise

    async def _follow(self, send: trio.MemorySendChannel[dict[str, Any]], subscribe: str | None,
                      base_delay: float, max_attempts: int) -> None:
        url = ws_url(self.url, self.token)
        failures = 0
        async with send:
            while True:
                try:
                    async with open_websocket_url(url, ssl_context=self.ssl_context,
                                                  connect_timeout=CONNECT_TIMEOUT) as ws:
                        failures = 0
                        try:
                            if not await _pump(ws, send, subscribe, self.verify_key):
                                return  # the consumer went away
                        finally:
                            await _close_transport(ws)
                except ConnectionClosed as exc:
                    code = exc.reason.code if exc.reason else None
                    if code == 1000:
                        return
                    if code in FINAL_CODES:
                        said = exc.reason.reason if exc.reason else None
                        raise StreamClosed(code, said or "closed by the server") from None
                    reason = f"connection closed ({code})"
                except ConnectionRejected as exc:
                    raise StreamClosed(None, f"{url} refused the connection: HTTP "
                                             f"{exc.status_code}") from None
                except (OSError, HandshakeError) as exc:
                    reason = f"cannot connect to {url}: {exc}"
                if failures >= max_attempts:
                    raise StreamClosed(None, f"{reason}; gave up after {max_attempts} attempts")
                await trio.sleep(base_delay * 2 ** failures)
                failures += 1


async def _pump(ws: WebSocketConnection, send: trio.MemorySendChannel[dict[str, Any]],
                subscribe: str | None, verify_key: Any = None) -> bool:
    """Forward snapshots until the connection closes; False if the consumer left.

    With `verify_key` only signed snapshots that verify are forwarded (the
    unsigned one sent on connect, before the subscription, is skipped).
    """
    if subscribe is not None:
        await ws.send_message(subscribe)
    while True:
        message = await ws.get_message()
        text = message if isinstance(message, str) else message.decode()
        if verify_key is not None and not text.startswith("{"):
            text = verify(text, verify_key)  # SignatureError when it does not verify
        elif verify_key is not None:
            doc = json.loads(text)
            if doc.get("type") == "error":
                raise SignatureError(f"the server refused signed snapshots: {doc['error']}")
            continue  # unsigned: sent before the subscription took effect
        doc = json.loads(text)
        if doc.get("type") == "error":
            continue
        try:
            await send.send(doc)
        except trio.BrokenResourceError:
            return False


async def _close_transport(ws: WebSocketConnection) -> None:
    # trio-websocket 0.12 leaves the socket open when the server closed first.
    stream = getattr(ws, "_stream", None)
    if stream is not None and ws.closed is not None:
        with trio.CancelScope(shield=True):
            await stream.aclose()
