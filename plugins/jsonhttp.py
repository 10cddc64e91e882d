"""JSON over HTTP, shared by the reference services and their plugins.

- Serving: `JSONHandler`, `route`, `Server`, `serve_until_stopped`, the base
  of the storage engine and the API server. HTTP/1.1 keep-alive is on, every
  answer (errors included) is a JSON object, and a handler bug becomes a 500
  answer, never a dead server.
- Calling: `JSONClient`, one keep-alive connection per thread, used by the
  API server (to the engine), the workload (to the API) and the plugins'
  probes and stops (`fetch_stats`, `request`).
- Plugin options: `read_host_port`, the `host` and `port` keys of both.

Standard library only (http.server, http.client): the reference services
stay dependency-free and start in a fraction of a second; this module
imports nothing from the core at import time. Error texts use the core's
wording ("expected an integer from 1 to 100, got 0").
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qs, unquote, urlsplit

if TYPE_CHECKING:
    from core import OptionReader

#: Largest request body accepted (bigger -> 413).
MAX_BODY = 1024 * 1024
#: Bound of one probe or stop request: a dead service must not stall the core.
REQUEST_TIMEOUT = 1.0

Route = tuple[str, "re.Pattern[str]", str]


class HTTPError(Exception):
    """An answer other than success: the status and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with a deeper accept queue (bursts of connections)."""

    request_queue_size = 256
    daemon_threads = True


class JSONHandler(BaseHTTPRequestHandler):
    """Dispatches `routes` to methods; subclasses declare them with `route()`.

    A route method receives the regex groups as positional arguments and
    returns (status, body_dict).
    """

    protocol_version = "HTTP/1.1"
    # Answer an unparsable request line with a status line, not HTTP/0.9's bare body.
    default_request_version = "HTTP/1.0"
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle's
    # algorithm meets the client's delayed ACK and each answer on a
    # keep-alive connection waits ~40 ms (measured: 50 ms per write).
    disable_nagle_algorithm = True
    #: Idle keep-alive connections are dropped after this many seconds.
    timeout = 60
    routes: ClassVar[list[Route]] = []
    query: dict[str, list[str]]

    # -- plumbing -------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        # One line per request would drown the supervisor's log view; errors
        # are reported through log_error.
        pass

    def log_error(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own parse errors (bad request line, too long headers)
        # come through here: answer them in JSON like everything else.
        text = message or HTTPStatus(code).phrase
        try:
            self.send_json(code, {"error": text}, close=True)
        except OSError:
            pass

    def send_json(self, status: int, body: dict[str, Any], *, close: bool = False) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def read_json(self) -> dict[str, Any]:
        """The request body as a JSON object; HTTPError(4xx) otherwise."""
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            raise HTTPError(411, "chunked bodies are not supported; send Content-Length")
        if length is None:
            raise HTTPError(411, "a JSON body with Content-Length is required")
        try:
            size = int(length)
        except ValueError:
            raise HTTPError(400, f"bad Content-Length {length!r}") from None
        if size < 0:
            raise HTTPError(400, f"bad Content-Length {length!r}")
        if size > MAX_BODY:
            raise HTTPError(413, f"body of {size} bytes is larger than {MAX_BODY}")
        raw = self.rfile.read(size)
        try:
            value = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise HTTPError(400, f"body is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise HTTPError(400, f"body: expected a JSON object, got {json_type(value)}")
        return value

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def int_param(self, name: str, default: int, lo: int, hi: int) -> int:
        raw = self.param(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise HTTPError(400, f"{name}: expected an integer, got {raw!r}") from None
        if not lo <= value <= hi:
            raise HTTPError(400, f"{name}: expected an integer from {lo} to {hi}, got {value}")
        return value

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        self.query = parse_qs(parts.query)
        allowed: list[str] = []
        try:
            for method, pattern, name in self.routes:
                match = pattern.fullmatch(parts.path)
                if match is None:
                    continue
                if method != self.command:
                    allowed.append(method)
                    continue
                status, body = getattr(self, name)(*map(unquote, match.groups()))
                self.send_json(status, body)
                return
            if allowed:
                raise HTTPError(405, f"{self.command} not allowed on {parts.path}; "
                                     f"use {', '.join(sorted(set(allowed)))}")
            raise HTTPError(404, f"no such endpoint: {parts.path}")
        except HTTPError as exc:
            # After a 4xx the body may be unread: close rather than misparse it.
            self.send_json(exc.status, {"error": exc.message}, close=exc.status in (411, 413))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug must cost one request, not the server
            self.log_error("internal error on %s %s: %r", self.command, self.path, exc)
            self.send_json(500, {"error": f"internal error: {type(exc).__name__}: {exc}"},
                           close=True)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch


def route(method: str, pattern: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Marks a handler method: @route("GET", r"/concepts/([^/]+)")."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__route__ = (method, re.compile(pattern))  # type: ignore[attr-defined]
        return fn

    return mark


def collect_routes(cls: type[JSONHandler]) -> list[Route]:
    """The routes declared with @route on `cls` (and its bases), in definition order."""
    found: list[Route] = []
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            mark = getattr(value, "__route__", None)
            if mark is not None:
                found.append((mark[0], mark[1], name))
    return found


def serve_until_stopped(server: Server, stop: threading.Event,
                        on_stop: Callable[[], None]) -> None:
    """Serve until SIGTERM, SIGINT or `stop` is set, then run `on_stop` and close.

    serve_forever runs in a thread because `shutdown()` blocks until the loop
    has exited, which would deadlock if called from the loop's own thread
    (a signal handler runs in the main thread).
    """
    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                            name="http-accept", daemon=True)
    loop.start()
    while not stop.wait(0.5):
        pass
    server.shutdown()
    try:
        on_stop()
    finally:
        server.server_close()
        # The work is done: a late SIGTERM (a supervisor escalating after a
        # POST /shutdown) must not turn this clean exit into "killed by
        # signal". Ignored handlers survive interpreter finalization.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


# -- calling ------------------------------------------------------------------

#: Errors of a keep-alive connection the server closed (idle timeout, restart).
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
          http.client.CannotSendRequest, http.client.ResponseNotReady)


class Unreachable(Exception):
    """The server could not be reached, or the connection broke mid-request."""


def json_type(value: object) -> str:
    """A JSON value's type as an error names it: "an array", "a string"."""
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
            list: "an array", dict: "an object", type(None): "null"}.get(
        type(value), type(value).__name__)


class JSONClient:
    """JSON calls to one server over one keep-alive connection per thread.

    A reused connection the server has closed meanwhile is retried once on
    a fresh one; any other failure raises `Unreachable` and drops the
    connection, so the next call starts afresh.
    """

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected an http://host:port URL, got {url!r}")
        self.url = url.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.timeout = timeout
        self._local = threading.local()

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        self._local.conn = conn
        return conn, False

    def close(self) -> None:
        """Close the calling thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    release = close

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             *, timeout: float | None = None) -> tuple[int, dict[str, Any]]:
        """(status, JSON object); a non-JSON answer comes back as {"error": text}."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if data is None and method in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = "0"
        for attempt in (1, 2):
            conn, reused = self._connection()
            conn.timeout = timeout or self.timeout
            if conn.sock is not None:
                conn.sock.settimeout(conn.timeout)
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                if resp.will_close:
                    self.close()
            except _STALE as exc:
                self.close()
                if reused and attempt == 1:
                    continue
                raise Unreachable(f"connection lost: {exc or type(exc).__name__}") from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise Unreachable(str(exc) or type(exc).__name__) from None
            try:
                value = json.loads(raw)
            except ValueError:
                return resp.status, {"error": raw[:200].decode(errors="replace")}
            return resp.status, value if isinstance(value, dict) else {"value": value}
        raise AssertionError("unreachable")


def request(host: str, port: int, method: str, path: str,
            timeout: float = REQUEST_TIMEOUT) -> tuple[int, dict[str, Any]]:
    """One JSON request on a fresh connection, closed after; `Unreachable` on failure."""
    client = JSONClient(f"http://{host}:{port}", timeout=timeout)
    try:
        return client.call(method, path)
    finally:
        client.close()


def fetch_stats(host: str, port: int, service: str) -> tuple[dict[str, Any], str | None]:
    """GET /stats of a reference service: (body, None), or ({}, why it failed)."""
    try:
        status, body = request(host, port, "GET", "/stats")
    except Unreachable as exc:
        return {}, f"{service} unreachable at {host}:{port}: {exc}"
    if status != 200:
        return {}, f"{service} /stats answered {status}: {body.get('error', body)}"
    return body, None


def read_host_port(opts: OptionReader, default_port: int) -> tuple[str, int]:
    """The `host` and `port` keys shared by the storage and api plugins."""
    from core import OptionError  # only plugins call this: the services never import core

    host = opts.string("host", "127.0.0.1")
    if not host.strip():
        raise OptionError("host", "expected a host name or address, got an empty string")
    return host, opts.integer("port", default_port, minimum=1, maximum=65535)
