"""Full garbage collections, timed by the tick instead of by chance.

A full (generation 2) collection walks every tracked object and holds the
event loop while it does. With 1,000 WebSocket clients connected the
supervisor tracks about 150,000 objects, and a full collection took
100-150 ms (measured in `bench/connection_storm.py --staged` with a
`gc.callbacks` probe). CPython starts one whenever enough objects have
survived the young collections, which is exactly what a connection storm
causes, at any moment: landing just before a tick, it made that snapshot
late for every client.

`PacedCollector` takes the full collections over: CPython's automatic
ones are switched off (the young generations are still collected as
usual: they are small and fast) and `collect_if_due` runs one right after
a tick's fan-out, when the next deadline is furthest away. It follows
CPython's rule: at least ten collections of the middle generation since
the last full one, and growth by a quarter since then. CPython counts the
objects that reached the old generation, which Python cannot read; the
interpreter's allocated memory blocks stand in for it (counting the old
generation's objects took 20-40 ms per tick with 1,000 clients, reading
the block count takes microseconds).

Python 3.14's incremental collector already keeps its pauses short, so
there the automatic behaviour is left alone.
"""

from __future__ import annotations

import gc
import logging
import sys
import time

log = logging.getLogger(__name__)

#: CPython's rule for a full collection (Modules/gcmodule.c): this many
#: middle-generation collections since the last one...
MIDDLE_COLLECTIONS = 10
#: ...and the interpreter's memory blocks grown by this fraction since.
GROWTH = 0.25
#: A third threshold no count reaches: no automatic full collection.
_NEVER = 2**31 - 1


class PacedCollector:
    """Full collections only when `collect_if_due` says so."""

    def __init__(self) -> None:
        #: False where the collector is incremental (3.14+): nothing to pace.
        self.enabled = sys.version_info < (3, 14)
        self.active = False
        #: Full collections run here, and the longest one in seconds.
        self.collections = 0
        self.longest = 0.0
        self._blocks = 0
        self._thresholds: tuple[int, int, int] | None = None

    def take_over(self) -> None:
        """Switch CPython's automatic full collections off (young ones go on)."""
        if not self.enabled or self.active:
            return
        self._thresholds = gc.get_threshold()
        young, middle, _ = self._thresholds
        gc.set_threshold(young, middle, _NEVER)
        self._blocks = sys.getallocatedblocks()
        self.active = True

    def give_back(self) -> None:
        """CPython's own thresholds again."""
        if self.active and self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
        self.active = False

    def due(self) -> bool:
        """Would CPython have run a full collection by now?"""
        if not self.active or gc.get_count()[2] < MIDDLE_COLLECTIONS:
            return False
        return sys.getallocatedblocks() - self._blocks > GROWTH * self._blocks

    def collect_if_due(self) -> bool:
        """Run a full collection if one is due; whether it ran."""
        if not self.due():
            return False
        started = time.perf_counter()
        gc.collect()
        took = time.perf_counter() - started
        self.collections += 1
        self.longest = max(self.longest, took)
        self._blocks = sys.getallocatedblocks()
        log.debug("full garbage collection after the tick: %.1f ms", took * 1000)
        return True
