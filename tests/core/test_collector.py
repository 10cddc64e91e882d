"""The paced garbage collector: no automatic full collection, one when due."""

from __future__ import annotations

import gc
import sys
import weakref
from collections.abc import Iterator

import pytest

from core.collector import MIDDLE_COLLECTIONS, PacedCollector

pytestmark = pytest.mark.skipif(sys.version_info >= (3, 14),
                                reason="incremental collector: nothing to pace")


@pytest.fixture
def collector() -> Iterator[PacedCollector]:
    before = gc.get_threshold()
    pacer = PacedCollector()
    yield pacer
    pacer.give_back()
    assert gc.get_threshold() == before


class Cycle:
    def __init__(self) -> None:
        self.me = self
        self.payload = [[i] for i in range(5)]


def full_collections_during(work) -> int:
    """How many generation-2 collections CPython ran on its own during `work()`."""
    seen = []

    def watch(phase: str, info: dict) -> None:
        if phase == "stop" and info["generation"] == 2:
            seen.append(info)

    gc.callbacks.append(watch)
    try:
        work()
    finally:
        gc.callbacks.remove(watch)
    return len(seen)


def grow() -> list[object]:
    # Containers that survive: what a crowd of new connections looks like.
    return [[Cycle() for _ in range(100)] for _ in range(3_000)]


def test_cpython_alone_collects_everything_while_a_heap_grows() -> None:
    # The baseline the next test departs from: without pacing, growth like
    # this triggers full collections (else the next test proves nothing).
    kept: list[object] = []
    assert full_collections_during(lambda: kept.append(grow())) > 0


def test_taken_over_no_automatic_full_collection(collector: PacedCollector) -> None:
    collector.take_over()
    assert collector.active
    kept: list[object] = []
    assert full_collections_during(lambda: kept.append(grow())) == 0
    # ...but the young generations are still collected automatically.
    assert gc.get_count()[2] >= MIDDLE_COLLECTIONS


def test_full_collection_when_due_and_only_then(collector: PacedCollector) -> None:
    collector.take_over()
    assert not collector.collect_if_due()  # nothing has grown yet
    kept = grow()
    assert collector.due()
    ran = full_collections_during(collector.collect_if_due)
    assert ran == 1 and collector.collections == 1 and collector.longest > 0
    assert gc.get_count()[2] == 0
    assert not collector.due()  # the growth is the new baseline
    del kept


def test_cycles_in_the_old_generation_are_freed(collector: PacedCollector) -> None:
    collector.take_over()
    probe = Cycle()
    ref = weakref.ref(probe)
    gc.collect(1)  # survived the young generations: now it is old
    del probe  # garbage now, but a cycle in the old generation
    gc.collect(1)
    assert ref() is not None  # the young collections leave it be
    kept = grow()  # growth: a full collection is due
    assert collector.collect_if_due()
    assert ref() is None
    del kept


def test_give_back_restores_cpython_thresholds(collector: PacedCollector) -> None:
    before = gc.get_threshold()
    collector.take_over()
    assert gc.get_threshold()[:2] == before[:2] and gc.get_threshold()[2] > 10**9
    collector.give_back()
    assert gc.get_threshold() == before and not collector.active
