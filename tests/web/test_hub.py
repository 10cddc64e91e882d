"""The hub alone: one encoding per tick, latest-value waits, filters, history."""

from __future__ import annotations

import json

import pytest
import trio
from trio.testing import MockClock

from core.hub import MIN_HISTORY_SECONDS, Hub, normalise_metrics

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return ("trio", {"clock": MockClock(autojump_threshold=0)})


def doc(k: int) -> dict:
    return {"components": {"a": {"state": "running", "cpu_percent": k, "memory_mb": 1.0,
                                 "pid": 7},
                           "b": {"state": "stopped", "cpu_percent": None, "memory_mb": None}},
            "metrics": {"timestamp": f"T{k}", "cpu_percent": 1.0, "memory_percent": 2.0}}


async def test_publish_encodes_once_and_numbers_ticks():
    hub = Hub(interval=1.0, history_seconds=60)
    first = hub.publish(doc(1))
    second = hub.publish(doc(2))
    assert (first.seq, second.seq) == (1, 2)
    assert json.loads(second.text) == doc(2)
    assert hub.latest is second
    # No filter: the very same string object every client sends.
    assert hub.filtered_text(second, None, None) is second.text


async def test_a_slow_waiter_gets_the_latest_not_the_backlog():
    hub = Hub(interval=1.0, history_seconds=60)
    got = []

    async def waiter() -> None:
        got.append(await hub.wait_after(0))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(1)
        assert got == []  # nothing published yet: it waits
        hub.publish(doc(1))
    assert got[0].seq == 1
    for k in range(2, 6):
        hub.publish(doc(k))
    snap = await hub.wait_after(1)  # behind by four: gets only the newest
    assert snap.seq == 5
    with trio.move_on_after(5) as waited:
        await hub.wait_after(5)
    assert waited.cancelled_caught  # nothing newer: it waits


async def test_filtered_text_cached_per_filter_and_tick():
    hub = Hub(interval=1.0, history_seconds=60)
    snap = hub.publish(doc(1))
    metrics = normalise_metrics(["cpu"])
    text = hub.filtered_text(snap, frozenset({"a"}), metrics)
    assert json.loads(text) == {"components": {"a": doc(1)["components"]["a"]},
                                "metrics": {"timestamp": "T1", "cpu_percent": 1.0}}
    assert hub.filtered_text(snap, frozenset({"a"}), normalise_metrics(["cpu_percent"])) is text
    newer = hub.publish(doc(2))
    assert json.loads(hub.filtered_text(newer, frozenset({"a"}), metrics))["metrics"][
        "timestamp"] == "T2"


async def test_history_points_window_and_bound():
    hub = Hub(interval=10.0, history_seconds=0)  # at least 30 minutes anyway
    for k in range(300):  # 50 minutes of ticks
        hub.publish(doc(k))
        await trio.sleep(10)
    points = hub.history()
    assert len(points) == MIN_HISTORY_SECONDS / 10 + 1
    assert points[-1]["timestamp"] == "T299" and points[0]["timestamp"] == "T119"
    assert points[-1]["components"] == {
        "a": {"state": "running", "cpu_percent": 299, "memory_mb": 1.0},
        "b": {"state": "stopped", "cpu_percent": None, "memory_mb": None}}
    assert set(points[-1]["metrics"]) == {
        "timestamp", "total_concepts", "total_associations", "storage_size_mb",
        "queries_per_second", "avg_latency_ms", "cpu_percent", "memory_percent"}
    assert [p["timestamp"] for p in hub.history(25)] == ["T297", "T298", "T299"]
