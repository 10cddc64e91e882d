"""The reference "Sutra API": a public HTTP service in front of the storage engine.

    python -m plugins.api.server --port 7702 --storage-url http://127.0.0.1:7701

Endpoints (JSON; errors are `{"error": "..."}`):

    POST /learn                 {"content", "related"?, "strength"?, "confidence"?,
                                 "kind"?, "id"?} -> 201 {"concept", "associations"}
    GET  /query?q=TEXT&limit=N  (or POST /query {"q", "limit"?}) -> {"query", "results"}
    GET  /concepts/{id}         -> {"concept"}
    GET  /concepts/{id}/associations
    GET  /health                -> 200, or 503 while the storage engine is unreachable
    GET  /stats                 -> requests served, queries per second and average
                                   latency over the last `window` seconds

While the storage engine is down every data request answers 503 with the
reason; each request tries again, so the API recovers by itself when the
engine returns. Standard library only (ThreadingHTTPServer; plugins.jsonhttp.JSONClient,
one keep-alive connection per thread to the engine).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

from plugins.jsonhttp import (
    HTTPError,
    JSONClient,
    JSONHandler,
    Server,
    Unreachable,
    collect_routes,
    json_type,
    route,
    serve_until_stopped,
)


class Window:
    """Requests and their latency over the last `seconds`, in one-second buckets."""

    def __init__(self, seconds: int = 10, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self.started = clock()
        self.total = 0
        self.errors = 0
        self._buckets = [[-1, 0, 0.0] for _ in range(seconds)]  # [second, count, latency]
        self._lock = threading.Lock()

    def record(self, latency: float, *, error: bool = False) -> None:
        now = int(self._clock())
        with self._lock:
            bucket = self._buckets[now % self.seconds]
            if bucket[0] != now:
                bucket[:] = [now, 0, 0.0]
            bucket[1] += 1
            bucket[2] += latency
            self.total += 1
            self.errors += error

    def figures(self) -> dict[str, Any]:
        now = self._clock()
        oldest = int(now) - self.seconds + 1
        with self._lock:
            live = [b for b in self._buckets if b[0] >= oldest]
            count = sum(b[1] for b in live)
            latency = sum(b[2] for b in live)
            total, errors = self.total, self.errors
        # On a fresh start the window is not full yet: divide by the time elapsed.
        span = max(1.0, min(float(self.seconds), now - self.started))
        return {
            "requests_served": total,
            "errors": errors,
            "queries_per_second": round(count / span, 3),
            "avg_latency_ms": round(latency / count * 1000, 3) if count else 0.0,
            "window_seconds": self.seconds,
        }


class APIHandler(JSONHandler):
    server_version = "SutraAPI/1.0"
    storage: JSONClient
    window: Window

    def finish(self) -> None:
        # One thread per client connection: close its storage connection too.
        try:
            super().finish()
        finally:
            self.storage.release()

    def _forward(self, method: str, path: str, body: dict[str, Any] | None = None
                 ) -> tuple[int, dict[str, Any]]:
        try:
            status, answer = self.storage.call(method, path, body)
        except Unreachable as exc:
            raise HTTPError(503, f"storage engine unavailable at {self.storage.url}: {exc}; "
                                 f"the API retries on every request") from None
        if status >= 500:
            raise HTTPError(502, f"storage engine error {status}: "
                                 f"{answer.get('error', answer)}")
        if status >= 400:
            raise HTTPError(status, str(answer.get("error", answer)))
        return status, answer

    def _timed(self, fn: Any, *args: Any) -> tuple[int, dict[str, Any]]:
        start = time.perf_counter()
        failed = True
        try:
            result = fn(*args)
            failed = False
            return result
        finally:
            self.window.record(time.perf_counter() - start, error=failed)

    # -- data endpoints (counted in the figures) ------------------------------------

    @route("POST", r"/learn")
    def learn(self) -> tuple[int, dict[str, Any]]:
        return self._timed(self._learn)

    def _learn(self) -> tuple[int, dict[str, Any]]:
        body = self.read_json()
        # The id is chosen here so that a request replayed after a lost
        # connection cannot store the concept twice (the replay gets 409).
        generated = "id" not in body
        body = {"id": secrets.token_hex(8), **body}
        try:
            return self._forward("POST", "/concepts", body)
        except HTTPError as exc:
            if exc.status == 409 and generated:
                _, found = self._forward("GET", f"/concepts/{body['id']}")
                return 201, {"concept": found["concept"], "associations": []}
            raise

    @route("GET", r"/query")
    def query_get(self) -> tuple[int, dict[str, Any]]:
        return self._timed(self._query, self.param("q"), self.param("limit", "10"))

    @route("POST", r"/query")
    def query_post(self) -> tuple[int, dict[str, Any]]:
        def run() -> tuple[int, dict[str, Any]]:
            body = self.read_json()
            text = body.get("q", body.get("query"))
            if not isinstance(text, str):
                raise HTTPError(400, f"q: expected a string (the search text), "
                                     f"got {json_type(text)}")
            return self._query(text, str(body.get("limit", 10)))
        return self._timed(run)

    def _query(self, text: str | None, limit: str | None) -> tuple[int, dict[str, Any]]:
        if not text:
            raise HTTPError(400, "the q parameter (search text) is required")
        return self._forward("GET", "/search?" + urlencode({"q": text, "limit": limit}))

    @route("GET", r"/concepts/([^/]+)")
    def concept(self, concept_id: str) -> tuple[int, dict[str, Any]]:
        return self._timed(self._forward, "GET", f"/concepts/{quote(concept_id)}")

    @route("GET", r"/concepts/([^/]+)/associations")
    def associations(self, concept_id: str) -> tuple[int, dict[str, Any]]:
        return self._timed(self._forward, "GET",
                           f"/concepts/{quote(concept_id)}/associations")

    # -- observation (not counted) ----------------------------------------------------

    def _storage_state(self) -> tuple[bool, str | None]:
        try:
            status, answer = self.storage.call("GET", "/health", timeout=0.5)
        except Unreachable as exc:
            return False, f"storage engine unavailable at {self.storage.url}: {exc}"
        if status != 200:
            return False, f"storage engine unhealthy: {answer.get('error', status)}"
        return True, None

    @route("GET", r"/health")
    def health(self) -> tuple[int, dict[str, Any]]:
        up, error = self._storage_state()
        if not up:
            return 503, {"status": "degraded", "storage": "down", "error": error}
        return 200, {"status": "ok", "storage": "up"}

    @route("GET", r"/stats")
    def stats(self) -> tuple[int, dict[str, Any]]:
        up, error = self._storage_state()
        figures = self.window.figures()
        figures.update(storage="up" if up else "down", storage_error=error,
                       uptime_seconds=round(time.monotonic() - self.window.started, 3))
        return 200, figures


APIHandler.routes = collect_routes(APIHandler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plugins.api.server",
                                     description="Reference Sutra API server.")
    parser.add_argument("--port", type=int, default=7702, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--storage-url", default="http://127.0.0.1:7701")
    parser.add_argument("--window", type=int, default=10,
                        help="seconds of the sliding window for qps and latency")
    args = parser.parse_args(argv)
    try:
        storage = JSONClient(args.storage_url)
    except ValueError as exc:
        print(f"api: {exc}", file=sys.stderr)
        return 2
    handler = type("Handler", (APIHandler,), {"storage": storage,
                                               "window": Window(max(1, args.window))})
    try:
        server = Server((args.host, args.port), handler)
    except OSError as exc:
        print(f"api: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    host, port = server.server_address[:2]
    print(f"api listening on http://{host}:{port} (storage {storage.url})", flush=True)
    serve_until_stopped(server, threading.Event(), lambda: None)
    print("api: stopped; bye", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
