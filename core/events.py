"""The event log: what happened, when, to which component, by whose hand.

The supervisor calls `EventLog.emit(kind, component, **data)` from the trio
thread for every event (a state change, a restart scheduled, a give-up, a
health change, a probe error, a reload, a control action). `emit` never
waits: it numbers the event, keeps it in a ring for `/ws` subscribers and
puts it in bounded queues, one per consumer (the SQLite writer, each
plugin's `on_event` hook, each notifier). A consumer that falls behind
loses events, counted and logged, and never delays supervision.

Events are kept in SQLite under the data directory, bounded by
`[events] keep_days` and `max_rows`, and served at `GET /api/events`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import trio

log = logging.getLogger("control_center")

#: The kinds of events, as `GET /api/events?kind=` and notifiers name them.
KINDS = ("state", "crashed", "restart_scheduled", "gave_up", "unhealthy", "recovered",
         "probe_error", "reload", "control", "restart")
#: Events a consumer may be behind before new ones are dropped for it.
QUEUE_SIZE = 1000
#: Events kept in memory for `/ws` subscribers and the newest queries.
RING_SIZE = 1000
#: How long a query waits for the store to hold the events emitted before it.
STORE_WAIT = 2.0


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class Event:
    """One event; `data` holds its kind's fields (old, new, reason, delay, actor ...)."""

    id: int
    kind: str
    time: float
    component: str | None
    data: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def as_dict(self) -> dict[str, Any]:
        """The event as `/ws` sends it and `/api/events` lists it."""
        return {"type": "event", "id": self.id, "kind": self.kind, "time": iso(self.time),
                "component": self.component, **self.data}


@dataclass(frozen=True)
class EventsConfig:
    """The `[events]` table."""

    keep_days: float = 30.0
    max_rows: int = 100_000


class Consumer:
    """A bounded queue and the task that drains it into `handle` (None: its owner drains it)."""

    def __init__(self, name: str, handle: Callable[[Event], Awaitable[None]] | None,
                 size: int = QUEUE_SIZE) -> None:
        self.name = name
        self.handle = handle
        self.send, self.receive = trio.open_memory_channel[Event](size)
        self.dropped = 0

    def offer(self, event: Event) -> None:
        try:
            self.send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("events: %s is behind; %d events dropped for it so far",
                            self.name, self.dropped)

    async def run(self) -> None:
        assert self.handle is not None
        async for event in self.receive:
            try:
                await self.handle(event)
            except Exception:  # one consumer's trouble must not stop the others
                log.exception("events: %s failed on event %d", self.name, event.id)


class EventStore:
    """Events in SQLite: one table, written in batches from a worker thread."""

    def __init__(self, path: Path, config: EventsConfig) -> None:
        self.path = path
        self.config = config
        self._db: sqlite3.Connection | None = None
        self._write_lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, "
                       "kind TEXT NOT NULL, time REAL NOT NULL, component TEXT, "
                       "data TEXT NOT NULL)")
            db.execute("CREATE INDEX IF NOT EXISTS events_time ON events (time)")
            db.execute("CREATE INDEX IF NOT EXISTS events_component ON events (component)")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=5)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def last_id(self) -> int:
        with self._connect() as db:
            row = db.execute("SELECT MAX(id) FROM events").fetchone()
        return int(row[0] or 0)

    def _writer_db(self) -> sqlite3.Connection:
        # One connection for the writes, kept open: connecting (and setting
        # WAL) took half of each write's time. Writes come from whichever
        # worker thread is free, one at a time (the writer awaits each).
        if self._db is None:
            self._db = sqlite3.connect(self.path, timeout=5, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
        return self._db

    def write(self, events: list[Event]) -> None:
        """Store `events` and apply the retention (blocking: call from a thread)."""
        with self._write_lock:
            try:
                self._write(events)
            except (sqlite3.Error, OSError):
                db, self._db = self._db, None  # the next write starts afresh
                if db is not None:
                    with contextlib.suppress(sqlite3.Error):
                        db.close()
                raise

    def close(self) -> None:
        """Close the writer's connection (a later write opens it again)."""
        with self._write_lock:
            db, self._db = self._db, None
            if db is not None:
                db.close()

    def _write(self, events: list[Event]) -> None:
        with self._writer_db() as db:
            db.executemany("INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?, ?)",
                           [(e.id, e.kind, e.time, e.component, json.dumps(dict(e.data)))
                            for e in events])
            db.execute("DELETE FROM events WHERE time < ?",
                       (time.time() - self.config.keep_days * 86400,))
            db.execute("DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?",
                       (self.config.max_rows,))

    def query(self, *, since: float | None = None, component: str | None = None,
              kind: str | None = None, limit: int = 100) -> list[Event]:
        """The newest `limit` events matching, oldest first (blocking: call from a thread).

        `component` = ID matches ID and its instances ID.0 ...; ID.K only that one.
        """
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("time >= ?", since), ("kind = ?", kind)):
            if value is not None:
                where.append(column)
                args.append(value)
        if component is not None:
            # ID is also each of its instances, ID.0 ... (an id holds no dot).
            where.append("(component = ? OR substr(component, 1, ?) = ?)")
            args += [component, len(component) + 1, component + "."]
        sql = "SELECT id, kind, time, component, data FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        with self._connect() as db:
            rows = db.execute(sql, [*args, limit]).fetchall()
        return [Event(id=r[0], kind=r[1], time=r[2], component=r[3],
                      data=MappingProxyType(json.loads(r[4]))) for r in reversed(rows)]


class EventLog:
    """Numbers events, keeps the newest, hands each to every consumer without waiting."""

    def __init__(self, store: EventStore | None = None) -> None:
        self.store = store
        self._next_id = (store.last_id() if store is not None else 0) + 1
        self.recent: deque[Event] = deque(maxlen=RING_SIZE)
        self.consumers: list[Consumer] = []
        self.counts: Counter[str] = Counter()
        #: Events the store could not keep (the disk or descriptors ran out).
        self.unstored = 0
        self._store_warned = -1e9
        self._changed = trio.Event()
        self._writer: Consumer | None = None
        # Events up to this id have been through the store's writer (stored,
        # or counted in `unstored`): a query waits for those emitted before it.
        self._stored_through = self._next_id - 1
        self._stored = trio.Event()
        self._writing = False  # the writer's task runs (EventLog.run)
        if store is not None:
            self._writer = Consumer("the event store", self._write_batch)
            self.consumers.append(self._writer)

    def add_consumer(self, name: str,
                     handle: Callable[[Event], Awaitable[None]] | None) -> Consumer:
        consumer = Consumer(name, handle)
        self.consumers.append(consumer)
        return consumer

    def emit(self, kind: str, component: str | None = None, **data: Any) -> Event:
        """Record an event now (from the trio thread); never blocks."""
        event = Event(id=self._next_id, kind=kind, time=time.time(), component=component,
                      data=MappingProxyType(data))
        self._next_id += 1
        self.recent.append(event)
        self.counts[kind] += 1
        for consumer in self.consumers:
            consumer.offer(event)
        changed, self._changed = self._changed, trio.Event()
        changed.set()
        return event

    async def wait_after(self, last_id: int) -> list[Event]:
        """The events newer than `last_id`, once there is one (from the ring)."""
        while not self.recent or self.recent[-1].id <= last_id:
            await self._changed.wait()
        return [e for e in self.recent if e.id > last_id]

    async def run(self) -> None:
        """Drain every consumer's queue until cancelled."""
        async with trio.open_nursery() as nursery:
            for consumer in self.consumers:
                if consumer.handle is not None:
                    nursery.start_soon(consumer.run)
            self._writing = self._writer is not None
            try:
                await trio.sleep_forever()
            finally:
                self._writing = False

    async def _write_batch(self, event: Event) -> None:
        assert self.store is not None and self._writer is not None
        batch = [event]
        while True:  # whatever else is queued goes in the same transaction
            try:
                batch.append(self._writer.receive.receive_nowait())
            except trio.WouldBlock:
                break
        try:
            await trio.to_thread.run_sync(self.store.write, batch)
        except (sqlite3.Error, OSError) as exc:  # out of descriptors, disk full...
            self.unstored += len(batch)
            now = time.monotonic()
            if now - self._store_warned > 10:
                self._store_warned = now
                log.error("events: cannot write to %s: %s (%d events not stored so far; "
                          "they are still pushed and notified)", self.store.path, exc,
                          self.unstored)
        finally:
            self._stored_through = max(self._stored_through, batch[-1].id)
            stored, self._stored = self._stored, trio.Event()
            stored.set()

    async def query(self, **filters: Any) -> list[Event]:
        if self.store is None:
            found = [e for e in self.recent if _matches(e, **filters)]
            return found[-filters.get("limit", 100):]
        # What was emitted (and perhaps already pushed) before this query is
        # in its answer: the store's writer runs behind the emitting code.
        target = self._next_id - 1
        with trio.move_on_after(STORE_WAIT):
            while self._writing and self._stored_through < target:
                await self._stored.wait()
        return await trio.to_thread.run_sync(lambda: self.store.query(**filters))  # type: ignore[union-attr]


def build(config: Any, plugins: Any) -> tuple[EventLog, list[Any]]:
    """The event log of a config: its store, each plugin's on_event, each notifier.

    Returns the log and the notifiers (whose tasks the caller runs with
    `notifier.run(consumer.receive)`, as `run_all` does).
    """
    from functools import partial

    from core.notify import Notifier

    store = EventStore(config.server.data_dir / ".control-center" / "events.sqlite3",
                       config.events)
    events = EventLog(store)
    for name in plugins.implementers("on_event"):
        async def deliver(event: Event, name: str = name) -> None:
            await trio.to_thread.run_sync(partial(plugins.call, name, "on_event",
                                                  event=event.as_dict()))
        events.add_consumer(f"plugin {name}'s on_event", deliver)
    notifiers = []
    for nc in config.notify:
        notifier = Notifier(nc)
        notifier.consumer = events.add_consumer(f"notify.{nc.name}", None)
        notifiers.append(notifier)
    return events, notifiers


async def run_all(events: EventLog, notifiers: list[Any]) -> None:
    """Run the event log's consumers and the notifiers until cancelled."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(events.run)
        for notifier in notifiers:
            nursery.start_soon(notifier.run, notifier.consumer.receive)


def _matches(event: Event, *, since: float | None = None, component: str | None = None,
             kind: str | None = None, limit: int = 100) -> bool:
    return ((since is None or event.time >= since)
            and (component is None or event.component == component
                 or (event.component or "").startswith(component + "."))
            and (kind is None or event.kind == kind))


def parse_since(text: str) -> float:
    """`since=` as epoch seconds: a number, or an ISO-8601 time ("...Z")."""
    try:
        value = float(text)
    except ValueError:
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise ValueError(f"expected epoch seconds or an ISO-8601 time, got {text!r}"
                             ) from None
    if not math.isfinite(value):
        raise ValueError(f"expected epoch seconds or an ISO-8601 time, got {text!r}")
    return value
