"""The knowledge store: concepts and associations in SQLite (WAL mode).

One writer connection behind a lock (SQLite allows one writer at a time
anyway) and one reader connection per thread, which WAL lets run
concurrently with the writer. Every write is one transaction committed
before the caller answers, so an acknowledged write survives `kill -9`;
with synchronous=FULL (the default) it survives a power cut too.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from plugins.jsonhttp import HTTPError

DB_NAME = "knowledge.db"
ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MAX_CONTENT = 16 * 1024
#: Words of a concept indexed for search and linking (bounds the cost of a learn).
MAX_WORDS = 64
#: Associations created to concepts sharing words with a new one.
MAX_LINKS = 5
#: Concepts per word considered when linking (bounds linking as the store grows).
LINK_SAMPLE = 200

_WORD_RE = re.compile(r"[a-z0-9]+")
_STOP = frozenset("""a an and are as at be but by for from has have in is it its of on or
that the this to was were will with not no into than then there these those""".split())

_SCHEMA = """
CREATE TABLE IF NOT EXISTS concepts (
    id TEXT PRIMARY KEY,
    content TEXT NOT NULL,
    strength REAL NOT NULL,
    confidence REAL NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS associations (
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    strength REAL NOT NULL,
    PRIMARY KEY (source, target, kind)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS associations_target ON associations (target);
CREATE TABLE IF NOT EXISTS terms (
    word TEXT NOT NULL,
    concept TEXT NOT NULL,
    PRIMARY KEY (word, concept)
) WITHOUT ROWID;
"""


class StoreError(HTTPError):
    """A request the store refuses; `status` is the HTTP status that fits."""


def words(text: str) -> list[str]:
    """The distinct indexable words of `text`, in order (lowercase, no stop words)."""
    seen: dict[str, None] = {}
    for w in _WORD_RE.findall(text.lower()):
        if len(w) >= 3 and w not in _STOP:
            seen.setdefault(w, None)
    return list(seen)[:MAX_WORDS]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _concept(row: Sequence[Any]) -> dict[str, Any]:
    return {"id": row[0], "content": row[1], "strength": row[2], "confidence": row[3],
            "created": _iso(row[4])}


def _association(row: Sequence[Any]) -> dict[str, Any]:
    return {"source": row[0], "target": row[1], "kind": row[2], "strength": row[3]}


class Store:
    """Concepts and associations under `data_dir`."""

    def __init__(self, data_dir: Path, *, synchronous: str = "FULL") -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / DB_NAME
        self._synchronous = synchronous
        self._lock = threading.Lock()
        self._closed = False
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._writer = self._connect()
        self._writer.execute("PRAGMA journal_mode=WAL")
        self._writer.executescript(_SCHEMA)
        self._concepts = self._writer.execute("SELECT COUNT(*) FROM concepts").fetchone()[0]
        self._associations = self._writer.execute(
            "SELECT COUNT(*) FROM associations").fetchone()[0]

    def _connect(self) -> sqlite3.Connection:
        # Autocommit mode (isolation_level=None): transactions are explicit.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=10.0)
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(503, "the storage engine is shutting down")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def release(self) -> None:
        """Close the calling thread's reader (its HTTP connection ended)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            return
        self._local.conn = None
        with self._readers_lock:
            if conn in self._readers:  # else close() already closed it
                self._readers.remove(conn)
                conn.close()

    # -- writes -----------------------------------------------------------------

    def learn(self, content: str, *, concept_id: str | None = None, strength: float = 1.0,
              confidence: float = 1.0, related: Iterable[str] = (), kind: str = "related",
              link_words: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Add a concept, link it, commit; returns (concept, associations created)."""
        if concept_id is None:
            concept_id = secrets.token_hex(8)
        related = list(dict.fromkeys(related))
        created = time.time()
        terms = words(content)
        with self._lock:
            if self._closed:
                raise StoreError(503, "the storage engine is shutting down")
            db = self._writer
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("SELECT 1 FROM concepts WHERE id=?", (concept_id,)).fetchone():
                    raise StoreError(409, f"concept {concept_id!r} already exists")
                if related:
                    marks = ",".join("?" * len(related))
                    known = {r[0] for r in db.execute(
                        f"SELECT id FROM concepts WHERE id IN ({marks})", related)}
                    missing = [r for r in related if r not in known]
                    if missing:
                        raise StoreError(400, f"related concept(s) not found: "
                                              f"{', '.join(missing)}")
                db.execute("INSERT INTO concepts VALUES (?,?,?,?,?)",
                           (concept_id, content, strength, confidence, created))
                links: list[tuple[str, str, str, float]] = [
                    (concept_id, r, kind, 1.0) for r in related]
                if link_words and terms:
                    links += [(concept_id, other, "shared_words", round(hits / len(terms), 3))
                              for other, hits in self._neighbours(db, terms, related)]
                db.executemany("INSERT OR IGNORE INTO terms VALUES (?,?)",
                               [(w, concept_id) for w in terms])
                added = 0
                for link in links:
                    added += db.execute("INSERT OR IGNORE INTO associations VALUES (?,?,?,?)",
                                        link).rowcount
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._concepts += 1
            self._associations += added
        concept = _concept((concept_id, content, strength, confidence, created))
        return concept, [_association(link) for link in links]

    @staticmethod
    def _neighbours(db: sqlite3.Connection, terms: list[str],
                    exclude: Iterable[str]) -> list[tuple[str, int]]:
        """Existing concepts sharing the most words with `terms` (bounded sample per word)."""
        counts: Counter[str] = Counter()
        for w in terms:
            counts.update(r[0] for r in db.execute(
                "SELECT concept FROM terms WHERE word=? LIMIT ?", (w, LINK_SAMPLE)))
        for c in exclude:
            counts.pop(c, None)
        return counts.most_common(MAX_LINKS)

    # -- reads --------------------------------------------------------------------

    def _rows(self, sql: str, params: Sequence[Any]) -> list[Any]:
        try:
            return self._reader().execute(sql, params).fetchall()
        except sqlite3.ProgrammingError:
            if self._closed:  # close() closed this reader under our feet
                raise StoreError(503, "the storage engine is shutting down") from None
            raise

    def get(self, concept_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM concepts WHERE id=?", (concept_id,))
        return _concept(rows[0]) if rows else None

    def associations(self, concept_id: str) -> list[dict[str, Any]] | None:
        """Associations from or to the concept; None when the concept does not exist."""
        if not self._rows("SELECT 1 FROM concepts WHERE id=?", (concept_id,)):
            return None
        rows = self._rows(
            "SELECT * FROM associations WHERE source=? UNION ALL "
            "SELECT * FROM associations WHERE target=? AND source<>? "
            "ORDER BY strength DESC", (concept_id, concept_id, concept_id))
        return [_association(r) for r in rows]

    def search(self, query: str, limit: int = 10) -> list[dict[str, Any]]:
        """Concepts ranked by how many of the query's words they contain."""
        terms = words(query)[:16]
        if not terms:
            raise StoreError(400, "the query needs at least one word of 3 or more letters "
                                  "(not a stop word)")
        marks = ",".join("?" * len(terms))
        rows = self._rows(
            f"SELECT c.*, COUNT(*) AS hits FROM terms t JOIN concepts c ON c.id = t.concept "
            f"WHERE t.word IN ({marks}) GROUP BY c.id "
            f"ORDER BY hits DESC, c.strength DESC, c.created DESC LIMIT ?",
            (*terms, limit))
        return [{**_concept(r), "score": round(r[5] / len(terms), 3)} for r in rows]

    def stats(self) -> dict[str, Any]:
        size = sum(p.stat().st_size for p in (
            self.path, self.path.with_name(DB_NAME + "-wal"),
            self.path.with_name(DB_NAME + "-shm")) if p.exists())
        wal = self.path.with_name(DB_NAME + "-wal")
        return {
            "total_concepts": self._concepts,
            "total_associations": self._associations,
            "storage_bytes": size,
            "storage_size_mb": round(size / 1_048_576, 3),
            "wal_bytes": wal.stat().st_size if wal.exists() else 0,
        }

    # -- shutdown -------------------------------------------------------------------

    def close(self) -> None:
        """Wait for the write in progress, checkpoint the WAL into the database, close."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with self._readers_lock:
                for conn in self._readers:
                    conn.close()
                self._readers.clear()
            self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._writer.close()
