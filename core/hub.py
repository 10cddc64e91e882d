"""Broadcast of snapshots: one encoding per tick, latest value per subscriber.

The supervisor calls `Hub.publish(doc)` once per tick from the main trio
thread. The document is encoded to JSON there, once, and every WebSocket
client sends that same string. A client task asks `wait_after(seq)` for the
first snapshot newer than the one it sent last, so a slow client skips the
stale ones instead of queueing them (latest-value semantics): memory per
client is one reference, whatever its speed.

The hub also keeps a ring of compact history points for the dashboard's
charts (`GET /api/history`).
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

log = logging.getLogger(__name__)

#: The snapshot's metrics, in the order of the contract.
METRIC_NAMES = (
    "timestamp",
    "total_concepts",
    "total_associations",
    "storage_size_mb",
    "queries_per_second",
    "avg_latency_ms",
    "cpu_percent",
    "memory_percent",
)

#: Short metric names a subscriber may use.
METRIC_ALIASES = {"cpu": "cpu_percent", "memory": "memory_percent"}

#: The history keeps at least this much, whatever history_seconds says.
MIN_HISTORY_SECONDS = 1800.0

#: Distinct subscription filters whose text is cached per tick. Past it a
#: filter's text is built for each client that asks: more CPU for a client
#: with a filter of its own, never more memory (10 clients with distinct
#: 58 KB filters once took the cache, and RSS, to 500 MB).
MAX_CACHED_FILTERS = 64


@dataclass(frozen=True)
class Snapshot:
    """One tick's document and its JSON text, shared by every client."""

    seq: int
    #: The snapshot document; never mutated after publish.
    doc: Mapping[str, Any]
    #: trio.current_time() at publish.
    mono: float

    @functools.cached_property
    def text(self) -> str:
        """json.dumps(doc), done once, by the first client that needs it: a
        supervisor nobody watches encodes no snapshot."""
        return json.dumps(self.doc)


def _point(doc: Mapping[str, Any]) -> dict[str, Any]:
    metrics = doc.get("metrics")
    components = doc.get("components")
    # A malformed document must not break the tick; it shows as gaps.
    metrics = metrics if isinstance(metrics, Mapping) else {}
    components = components if isinstance(components, Mapping) else {}
    return {
        "timestamp": metrics.get("timestamp"),
        "metrics": {k: metrics.get(k) for k in METRIC_NAMES},
        "components": {cid: _component_point(c)
                       for cid, c in components.items() if isinstance(c, Mapping)},
    }


def _component_point(c: Mapping[str, Any]) -> dict[str, Any]:
    # A point's per-component fields, spelled out: this runs for every
    # component every tick.
    point = {"state": c.get("state"), "cpu_percent": c.get("cpu_percent"),
             "memory_mb": c.get("memory_mb")}
    own = c.get("metrics")
    if own and isinstance(own, Mapping):  # only where a probe gave some: the ring stays small
        point["metrics"] = own
    return point


def normalise_metrics(names: Iterable[str]) -> frozenset[str]:
    """Full metric names for a subscription; `timestamp` is always kept."""
    return frozenset(METRIC_ALIASES.get(n, n) for n in names) | {"timestamp"}


class Hub:
    """Holds the latest snapshot, wakes the fan-out, keeps the history ring."""

    def __init__(self, *, interval: float, history_seconds: float) -> None:
        self.interval = interval
        self.history_seconds = max(history_seconds, MIN_HISTORY_SECONDS)
        self.latest: Snapshot | None = None
        self._changed = trio.Event()
        maxlen = math.ceil(self.history_seconds / interval) + 1
        # Each point is kept as its JSON text: a tenth of the memory of the
        # dicts (30 minutes of 100 components would be ~50 MB as dicts), and
        # GET /api/history joins texts instead of encoding again.
        self._history: deque[tuple[float, str]] = deque(maxlen=maxlen)
        # Filtered texts of the latest snapshot, one per distinct filter.
        self._filtered: dict[tuple[Any, Any], str] = {}
        #: doc -> the document to publish (the remotes' components merged in).
        self.extender: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def publish(self, doc: dict[str, Any]) -> Snapshot:
        """Make `doc` the latest snapshot and wake every waiting client.

        Called from the trio thread; the caller must not mutate `doc` after.
        """
        # The history keeps this machine's components only: its memory stays
        # bounded whatever the number of remotes (each keeps its own history).
        local = doc
        if self.extender is not None:
            try:
                doc = self.extender(doc)
            except Exception:  # this machine's snapshot goes out whatever the merge did
                log.exception("merging the remotes into the snapshot")
        seq = 1 if self.latest is None else self.latest.seq + 1
        now = trio.current_time()
        snap = Snapshot(seq=seq, doc=doc, mono=now)
        self.latest = snap
        self._filtered = {}
        self._history.append((now, json.dumps(_point(local))))
        changed, self._changed = self._changed, trio.Event()
        changed.set()
        return snap

    async def wait_after(self, seq: int) -> Snapshot:
        """The latest snapshot once its seq is greater than `seq`."""
        while self.latest is None or self.latest.seq <= seq:
            await self._changed.wait()
        return self.latest

    def history_json(self, seconds: float | None = None) -> str:
        """History points as a JSON array, oldest first; only the last `seconds` if given."""
        if seconds is None or not self._history:
            texts = [p for _, p in self._history]
        else:
            since = self._history[-1][0] - seconds
            texts = [p for t, p in self._history if t >= since]
        return "[" + ",".join(texts) + "]"

    def history(self, seconds: float | None = None) -> list[dict[str, Any]]:
        """History points, decoded (for tests and the Python API)."""
        return json.loads(self.history_json(seconds))

    def filtered_text(self, snap: Snapshot, components: frozenset[str] | None,
                      metrics: frozenset[str] | None) -> str:
        """The JSON of `snap` restricted to a subscription, cached per filter.

        None means "no filter" for that key. Only the latest snapshot is
        cached: a client that is behind gets the latest anyway.
        """
        if components is None and metrics is None:
            return snap.text
        key = (components, metrics)
        if snap is self.latest:
            found = self._filtered.get(key)
            if found is not None:
                return found
        doc = snap.doc
        comps = doc.get("components") or {}
        mets = doc.get("metrics") or {}
        out = {
            "components": comps if components is None else
            {cid: c for cid, c in comps.items() if cid in components},
            "metrics": mets if metrics is None else
            {k: v for k, v in mets.items() if k in metrics},
        }
        text = json.dumps(out)
        if snap is self.latest and len(self._filtered) < MAX_CACHED_FILTERS:
            self._filtered[key] = text
        return text
