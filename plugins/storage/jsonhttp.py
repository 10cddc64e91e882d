"""A small JSON-over-HTTP base shared by the storage engine and the API server.

Standard library only (http.server): the reference components stay
dependency-free and start in a fraction of a second. HTTP/1.1 keep-alive
is on, every answer (errors included) is a JSON object, and a handler bug
becomes a 500 answer, never a dead server.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, unquote, urlsplit

#: Largest request body accepted (bigger -> 413).
MAX_BODY = 1024 * 1024

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
            raise HTTPError(400, "body must be a JSON object")
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
            raise HTTPError(400, f"{name} must be an integer, got {raw!r}") from None
        if not lo <= value <= hi:
            raise HTTPError(400, f"{name} must be from {lo} to {hi}, got {value}")
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
