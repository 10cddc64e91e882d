"""The reference storage engine: a knowledge store served as JSON over HTTP.

    python -m plugins.storage.engine --data-dir DIR --port 7701 [--host 127.0.0.1]

Endpoints (all JSON; errors are `{"error": "..."}` with a 4xx/5xx status):

    POST /concepts                 {"content", "id"?, "strength"?, "confidence"?,
                                    "related"?: [ids], "kind"?, "link_words"?: bool}
                                   -> 201 {"concept", "associations"}
    GET  /concepts/{id}            -> {"concept"}                  (404 if unknown)
    GET  /concepts/{id}/associations -> {"concept", "associations"}
    GET  /search?q=TEXT&limit=N    -> {"query", "results": [concept + "score"]}
    GET  /stats                    -> counts, bytes on disk (WAL included)
    GET  /health                   -> {"status": "ok"}
    POST /shutdown                 -> 202, then the same clean exit as SIGTERM

`--port 0` picks a free port; the first line on stdout names the address.
SIGTERM/SIGINT/POST /shutdown: stop accepting, wait for the write in
progress, checkpoint the WAL, close, exit 0.
"""

from __future__ import annotations

import argparse
import math
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any

from plugins.jsonhttp import (
    HTTPError,
    JSONHandler,
    Server,
    collect_routes,
    route,
    serve_until_stopped,
)
from plugins.storage.store import ID_RE, MAX_CONTENT, Store


def _fraction(body: dict[str, Any], key: str) -> float:
    value = body.get(key, 1.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) \
            or not 0.0 <= value <= 1.0:
        raise HTTPError(400, f"{key}: expected a number from 0 to 1, got {value!r}")
    return float(value)


def _check_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise HTTPError(400, f"{what}: expected 1-64 characters of letters, digits, '_.:-', "
                             f"got {value!r}")
    return value


class EngineHandler(JSONHandler):
    server_version = "SutraStorage/1.0"
    store: Store
    stop_event: threading.Event

    def finish(self) -> None:
        # One thread per client connection: its SQLite reader goes with it,
        # or every connection ever made would keep three file descriptors.
        try:
            super().finish()
        finally:
            self.store.release()

    @route("POST", r"/concepts")
    def learn(self) -> tuple[int, dict[str, Any]]:
        body = self.read_json()
        unknown = set(body) - {"content", "id", "strength", "confidence", "related", "kind",
                               "link_words"}
        if unknown:
            raise HTTPError(400, f"unknown field(s): {', '.join(sorted(unknown))}")
        content = body.get("content")
        if not isinstance(content, str) or not content.strip():
            raise HTTPError(400, "content: expected a non-empty string")
        if len(content) > MAX_CONTENT:
            raise HTTPError(413, f"content is longer than {MAX_CONTENT} characters")
        concept_id = body.get("id")
        if concept_id is not None:
            _check_id(concept_id, "id")
        related = body.get("related", [])
        if not isinstance(related, list) or len(related) > 100:
            raise HTTPError(400, "related: expected an array of at most 100 concept ids")
        for i, r in enumerate(related):
            _check_id(r, f"related[{i}]")
        kind = body.get("kind", "related")
        if not isinstance(kind, str) or not 0 < len(kind) <= 64:
            raise HTTPError(400, "kind: expected a string of 1-64 characters")
        link_words = body.get("link_words", True)
        if not isinstance(link_words, bool):
            raise HTTPError(400, "link_words: expected true or false")
        concept, links = self.store.learn(
            content, concept_id=concept_id, strength=_fraction(body, "strength"),
            confidence=_fraction(body, "confidence"), related=related, kind=kind,
            link_words=link_words)
        return 201, {"concept": concept, "associations": links}

    @route("GET", r"/concepts/([^/]+)")
    def fetch(self, concept_id: str) -> tuple[int, dict[str, Any]]:
        concept = self.store.get(concept_id)
        if concept is None:
            raise HTTPError(404, f"no concept with id {concept_id!r}")
        return 200, {"concept": concept}

    @route("GET", r"/concepts/([^/]+)/associations")
    def associations(self, concept_id: str) -> tuple[int, dict[str, Any]]:
        found = self.store.associations(concept_id)
        if found is None:
            raise HTTPError(404, f"no concept with id {concept_id!r}")
        return 200, {"concept": concept_id, "associations": found}

    @route("GET", r"/search")
    def search(self) -> tuple[int, dict[str, Any]]:
        query = self.param("q")
        if not query:
            raise HTTPError(400, "the q parameter (search text) is required")
        limit = self.int_param("limit", 10, 1, 1000)
        return 200, {"query": query, "results": self.store.search(query, limit)}

    @route("GET", r"/stats")
    def stats(self) -> tuple[int, dict[str, Any]]:
        return 200, self.store.stats()

    @route("GET", r"/health")
    def health(self) -> tuple[int, dict[str, Any]]:
        if self.stop_event.is_set():
            raise HTTPError(503, "the storage engine is shutting down")
        return 200, {"status": "ok"}

    @route("POST", r"/shutdown")
    def shutdown(self) -> tuple[int, dict[str, Any]]:
        self.stop_event.set()
        return 202, {"status": "shutting down"}


EngineHandler.routes = collect_routes(EngineHandler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plugins.storage.engine",
                                     description="Reference storage engine (SQLite, WAL).")
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="directory of the database (created if missing)")
    parser.add_argument("--port", type=int, default=7701, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--sync", choices=("full", "normal"), default="full",
                        help="SQLite synchronous: full survives power loss, normal "
                             "survives a process crash (default full)")
    args = parser.parse_args(argv)
    try:
        store = Store(args.data_dir, synchronous=args.sync.upper())
    except (OSError, sqlite3.Error) as exc:
        print(f"storage engine: cannot open {args.data_dir}: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    handler = type("Handler", (EngineHandler,), {"store": store, "stop_event": stop})
    try:
        server = Server((args.host, args.port), handler)
    except OSError as exc:
        store.close()
        print(f"storage engine: cannot listen on {args.host}:{args.port}: {exc}",
              file=sys.stderr)
        return 1
    host, port = server.server_address[:2]
    stats = store.stats()
    print(f"storage engine listening on http://{host}:{port} (data {store.path}, "
          f"{stats['total_concepts']} concepts)", flush=True)
    serve_until_stopped(server, stop, store.close)
    print("storage engine: WAL checkpointed, database closed; bye", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
