"""Following other Control Centers: their components in this one's snapshot.

One `Follower` task per `[remotes.NAME]` keeps a WebSocket open to the
remote's `/ws` (reconnecting as the protocol says) and keeps its latest
document only, already turned into `NAME/ID` entries. `Federation` is the
hub's extender: at each publish it adds those entries and a `hosts` object
to this machine's document, so the tick pays a dict update per remote and
nothing waits for a remote.

A remote silent for 2 of its intervals shows its components with state
"error" ("host NAME unreachable since ..."); its next document makes them
live again. A remote whose instance id is ours, or whose own hosts include
ours (it follows us back, maybe through others), is refused: its
components are not merged and hosts[NAME].error says why.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections import deque
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

from core.remotes import RemoteConfig
from core.snapshot import iso_utc

log = logging.getLogger(__name__)

#: The protocol's reconnect policy: 3 s, doubling; a supervisor never gives
#: up on a host, so past the 10th failure in a row it keeps retrying every
#: 60 s. No delay is ever longer than that steady retry.
RECONNECT_BASE = 3.0
RECONNECT_STEADY = 60.0
RECONNECT_DOUBLINGS = 10
#: Failures in a row after which a host is "unreachable" rather than "reconnecting".
UNREACHABLE_AFTER = 10
#: A remote is shown in error when silent for this many of its intervals.
SILENT_INTERVALS = 2.0
#: A connection silent this many intervals (at least SILENCE_MIN s) is dropped and redone.
DROP_INTERVALS = 5.0
SILENCE_MIN = 10.0
#: Seconds for the TCP connect, TLS and WebSocket handshake together.
CONNECT_TIMEOUT = 10.0
#: Largest document taken from a remote (a chain's snapshot may be big).
MAX_DOCUMENT_BYTES = 32 * 2**20
#: Documents taken per interval at most: a flooding remote costs at most that
#: many decodes; the rest waits in its socket (trio-websocket's queue holds one).
MAX_PER_INTERVAL = 4


def reconnect_delay(failures: int) -> float:
    """Seconds to wait after the `failures`-th failure in a row (1, 2, ...)."""
    if failures > RECONNECT_DOUBLINGS:
        return RECONNECT_STEADY
    return min(RECONNECT_BASE * 2 ** (max(failures, 1) - 1), RECONNECT_STEADY)


class BadDocument(Exception):
    """The remote sent something that is not a snapshot."""


class TLSFailed(Exception):
    """The TLS handshake with the remote failed (its certificate, most often)."""


class HandshakeTimeout(Exception):
    """The remote took the connection but never finished the handshake."""


class Silent(Exception):
    """An open connection brought no document for too long."""


def describe(exc: BaseException, remote: RemoteConfig) -> str:
    """What went wrong with `remote`, for hosts[NAME].error (never the token)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, ConnectionRejected):
        if exc.status_code == 401:
            return (f"the remote refused our token (HTTP 401): check remotes.{remote.name}."
                    f"{'token_file' if remote.token_file else 'token'}")
        return f"the remote refused the connection: HTTP {exc.status_code}"
    if isinstance(exc, HandshakeTimeout | Silent):
        return str(exc)
    if isinstance(exc, TLSFailed):
        cause = exc.args[0]
        reason = getattr(cause, "verify_message", None) or getattr(cause, "reason", None)
        return f"TLS with {remote.url} failed: {reason or cause}"
    if isinstance(exc, ConnectionClosed):
        reason = exc.reason
        if reason is None:
            return "the remote closed the connection"
        return f"the remote closed the connection ({reason.code} {reason.name})"
    if isinstance(exc, BadDocument):
        return f"the remote sent an invalid snapshot: {exc}"
    if isinstance(exc, OSError):
        return f"cannot connect to {remote.url}: {exc.strerror or exc}"
    if isinstance(exc, trio.BrokenResourceError):
        return "the connection broke"
    return f"{type(exc).__name__}: {exc}"


class Follower:
    """One remote: its connection, its latest document and its state."""

    def __init__(self, remote: RemoteConfig, federation: Federation) -> None:
        self.remote = remote
        self.name = remote.name
        self.federation = federation
        self.ssl_context = remote.ssl_context()
        self.ws_open = False
        self.failures = 0
        self.error: str | None = None
        #: The remote's instance id, once known (also when refused).
        self.instance: str | None = None
        self.refused = False
        self.metrics: Any = None
        #: When the latest document came: trio clock, wall clock.
        self.received: float | None = None
        self.received_wall: float | None = None
        self.started_wall = time.time()
        self._gaps: deque[float] = deque(maxlen=5)
        self._entries: dict[str, dict[str, Any]] = {}
        self._nested: dict[str, dict[str, Any]] = {}
        #: The entries in error, built once per silence.
        self._stale: tuple[float | None, dict[str, dict[str, Any]]] | None = None

    # -- what the tick reads -----------------------------------------------------

    def interval(self) -> float:
        """The remote's interval as seen (median of recent gaps), at least ours."""
        import statistics  # only a supervisor with remotes needs it

        local = self.federation.interval
        return max(local, statistics.median(self._gaps)) if self._gaps else local

    def silent(self, now: float) -> bool:
        return self.received is None or now - self.received > SILENT_INTERVALS * self.interval()

    def state(self, now: float) -> str:
        if self.ws_open and not self.silent(now):
            return "connected"
        if self.ws_open or self.failures >= UNREACHABLE_AFTER:
            return "unreachable"
        return "reconnecting"

    def unreachable_message(self) -> str:
        since = self.received_wall if self.received_wall is not None else self.started_wall
        return f"host {self.name} unreachable since {iso_utc(since)}"

    def entries(self, now: float) -> Mapping[str, Mapping[str, Any]]:
        """This remote's `NAME/ID` entries for the snapshot at `now`."""
        if self.refused or not self._entries:
            return {}
        if not self.silent(now):
            return self._entries
        if self._stale is None or self._stale[0] != self.received:
            message = self.unreachable_message()
            self._stale = (self.received, {cid: {**c, "state": "error", "error": message}
                                           for cid, c in self._entries.items()})
        return self._stale[1]

    def hosts(self, now: float) -> dict[str, Any]:
        """hosts[NAME], and the remote's own hosts as `NAME/...` (a chain)."""
        silent = self.silent(now)
        error = self.error
        if error is None and silent and self.ws_open:
            error = self.unreachable_message()
        out: dict[str, Any] = {self.name: {
            "state": self.state(now),
            "last_snapshot": None if self.received_wall is None else iso_utc(self.received_wall),
            "metrics": self.metrics,
            "error": error,
            "instance": self.instance,
        }}
        if self.refused:
            return out
        if silent:
            message = self.unreachable_message()
            for name, entry in self._nested.items():
                out[name] = {**entry, "state": "unreachable", "error": message}
        else:
            out.update(self._nested)
        return out

    # -- the connection ----------------------------------------------------------

    async def run(self) -> None:
        """Follow the remote until cancelled; never gives up."""
        while True:
            try:
                await self._session()
                error = "the remote closed the connection"
            except Exception as exc:
                error = describe(exc, self.remote)
            self.ws_open = False
            self.failures += 1
            self.error = error
            delay = reconnect_delay(self.failures)
            log.info("remote %s: %s; retrying in %g s (failure %d in a row)",
                     self.name, error, delay, self.failures)
            await trio.sleep(delay)

    async def _session(self) -> None:
        """One connection: connect (bounded), then take documents until it fails."""
        remote = self.remote
        parts = urlsplit(remote.url)
        host = parts.hostname or ""
        port = parts.port or (443 if remote.tls else 80)
        headers = [(k.lower().encode(), v.encode()) for k, v in remote.headers().items()]
        stream: trio.abc.Stream | None = None
        async with trio.open_nursery() as nursery:
            try:
                with trio.move_on_after(CONNECT_TIMEOUT) as connecting:
                    stream = await trio.open_tcp_stream(host, port)
                    if self.ssl_context is not None:
                        stream = trio.SSLStream(stream, self.ssl_context, server_hostname=host,
                                                https_compatible=True)
                        try:
                            await stream.do_handshake()
                        except trio.BrokenResourceError as exc:
                            raise TLSFailed(exc.__cause__ or exc) from None
                    # A rejection (401, 429...) is raised by its reader, in this nursery.
                    ws = await wrap_client_stream(
                        nursery, stream, parts.netloc, "/ws", extra_headers=headers,
                        message_queue_size=1, max_message_size=MAX_DOCUMENT_BYTES)
                if connecting.cancelled_caught:
                    raise HandshakeTimeout(f"no WebSocket handshake within {CONNECT_TIMEOUT:g} s")
                self.ws_open = True
                if self.failures:
                    log.info("remote %s: connected", self.name)
                await self._receive(ws)
            finally:
                self.ws_open = False
                if stream is not None:
                    # Shielded: a Cancelled here would replace the error being raised.
                    with trio.CancelScope(shield=True):
                        await trio.aclose_forcefully(stream)
                nursery.cancel_scope.cancel()  # trio-websocket's reader

    async def _receive(self, ws: WebSocketConnection) -> None:
        while True:
            limit = max(DROP_INTERVALS * self.interval(), SILENCE_MIN)
            with trio.move_on_after(limit) as waiting:
                text = await ws.get_message()
            if waiting.cancelled_caught:
                raise Silent(f"no snapshot for {limit:g} s: reconnecting")
            self.accept(text, trio.current_time())
            self.failures = 0
            # Bounded work whatever the remote sends: a flood waits in its socket.
            await trio.sleep(self.federation.interval / MAX_PER_INTERVAL)

    def accept(self, text: str | bytes, now: float) -> None:
        """Take one document from the remote (its latest replaces the last)."""
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise BadDocument(f"not JSON ({exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("components"), dict):
            raise BadDocument("expected an object with 'components'")
        instance = doc.get("instance")
        self.instance = instance if isinstance(instance, str) else None
        hosts = doc.get("hosts")
        hosts = hosts if isinstance(hosts, dict) else {}
        refusal = self._loop(hosts)
        if self.received is not None:
            self._gaps.append(now - self.received)
        self.received, self.received_wall = now, time.time()
        metrics = doc.get("metrics")
        self.metrics = metrics if isinstance(metrics, dict) else None
        if refusal is not None:
            if not self.refused:
                log.warning("remote %s: %s", self.name, refusal)
            self.refused, self.error = True, refusal
            self._entries, self._nested, self._stale = {}, {}, None
            return
        self.refused, self.error = False, None
        name = self.name
        entries: dict[str, dict[str, Any]] = {}
        for cid, comp in doc["components"].items():
            if isinstance(comp, dict):
                host = comp.get("host")
                entries[f"{name}/{cid}"] = {
                    **comp, "host": f"{name}/{host}" if isinstance(host, str) else name}
        self._entries = entries
        self._nested = {f"{name}/{h}": v for h, v in hosts.items() if isinstance(v, dict)}
        self._stale = None

    def _loop(self, hosts: Mapping[str, Any]) -> str | None:
        ours = self.federation.instance
        if self.instance == ours:
            return (f"loop refused: remote {self.name} is this Control Center "
                    f"(instance {ours})")
        for host, entry in hosts.items():
            if isinstance(entry, dict) and entry.get("instance") == ours:
                return (f"loop refused: remote {self.name} follows this Control Center "
                        f"back (as its host {host!r})")
        return None


class Federation:
    """The followers of one Control Center, and the hub's extender merging them."""

    def __init__(self, remotes: Mapping[str, RemoteConfig], instance: str,
                 interval: float) -> None:
        self.instance = instance
        self.interval = interval
        self.followers = {name: Follower(r, self) for name, r in remotes.items()}

    def remote(self, name: str) -> RemoteConfig | None:
        follower = self.followers.get(name)
        return None if follower is None else follower.remote

    def hung(self, name: str) -> str | None:
        """Why a request to `name` would hang: its connection is open but silent."""
        follower = self.followers[name]
        if follower.ws_open and follower.silent(trio.current_time()):
            return follower.unreachable_message()
        return None

    def ssl_context(self, name: str) -> ssl.SSLContext | None:
        return self.followers[name].ssl_context

    def __call__(self, doc: dict[str, Any]) -> dict[str, Any]:
        """`doc` with the instance id and, with remotes, their components and `hosts`."""
        out = {**doc, "instance": self.instance}
        if not self.followers:
            return out
        now = trio.current_time()
        components = dict(doc.get("components") or {})
        hosts: dict[str, Any] = {}
        for follower in self.followers.values():
            components.update(follower.entries(now))
            hosts.update(follower.hosts(now))
        out["components"] = components
        out["hosts"] = hosts
        return out

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """One task per remote, until cancelled."""
        async with trio.open_nursery() as nursery:
            for follower in self.followers.values():
                nursery.start_soon(follower.run, name=f"follow {follower.name}")
            task_status.started()
