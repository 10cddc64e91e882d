"""Per-component metrics: checked, in the snapshot, in Prometheus; refusals logged once."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from core import Launch, Probe, hookimpl
from core.config import load
from core.hub import Hub
from core.plugins import PluginManager
from core.probe_metrics import accept
from core.supervisor import Supervisor
from core.web import serve

pytestmark = pytest.mark.anyio


class Owner:
    """Stands for a component record: refusals are remembered per owner."""


def test_accept_keeps_numbers_with_good_names_and_tells_each_refusal_once() -> None:
    notes: list[str] = []
    owner = Owner()
    raw = {"hits": 3, "hit_ratio": 0.5, "Bad Name": 1, "9lives": 1, "text": "x",
           "flag": True, "nan": float("nan"), "x" * 65: 1}
    for _ in range(3):
        assert accept(owner, raw, notes.append) == {"hits": 3, "hit_ratio": 0.5}
    assert len(notes) == 6, notes
    assert "metric 'Bad Name' refused: a name must match [a-z_][a-z0-9_]*" in notes[0]
    assert "metric 'text' refused: expected a number, got str" in notes
    assert "metric 'flag' refused: expected a number, got bool" in notes
    assert "metric 'nan' refused: expected a finite number, got nan" in notes
    # Another component is told on its own.
    other: list[str] = []
    accept(Owner(), {"Bad": 1}, other.append)
    assert len(other) == 1


def test_accept_bounds_the_number_of_metrics() -> None:
    notes: list[str] = []
    kept = accept(Owner(), {f"m{i}": i for i in range(70)}, notes.append)
    assert len(kept) == 64 and len(notes) == 6
    assert "more than 64 metrics" in notes[0]


class CachePlugin:
    """A third-party-like plugin whose probe reports its own metrics and two of the five."""

    def __init__(self, concepts: int) -> None:
        self.concepts = concepts

    @hookimpl
    def start(self, component):
        return Launch(argv=(sys.executable, "-c", "import time; time.sleep(60)"))

    @hookimpl
    def probe(self, component, pid):
        return Probe(metrics={"cache_hits": 41, "hit_ratio": 0.25, "Bad Name": 1,
                              "total_concepts": self.concepts,
                              "avg_latency_ms": 2.0 * self.concepts})


async def test_metrics_reach_the_snapshot_prometheus_and_the_log(tmp_path: Path) -> None:
    plugins = PluginManager(load_entry_points=False,
                            extra={"cache": CachePlugin(10), "cache2": CachePlugin(30)})
    path = tmp_path / "config.toml"
    path.write_text('[server]\nport = 0\ninterval = 0.2\n'
                    '[components.a]\nplugin = "cache"\n[components.b]\nplugin = "cache2"\n'
                    '[components.c]\nplugin = "process"\n'
                    f'command = ["{sys.executable}", "-c", "import time; time.sleep(60)"]\n')
    config = load(path, plugins=plugins.names, validate=plugins.validate)
    hub = Hub(interval=config.server.interval, history_seconds=60)
    sup = Supervisor(config, plugins, hub)
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve, sup, hub, config.server, shutdown=shutdown))
        await nursery.start(sup.run)
        try:
            with trio.fail_after(15):
                while True:
                    snap = hub.latest
                    comps = snap.doc["components"] if snap else {}
                    if comps and all(comps[c]["state"] == "running" for c in "abc") and \
                            comps["a"]["metrics"] and comps["b"]["metrics"]:
                        break
                    await trio.sleep(0.05)
            doc = hub.latest.doc
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                text = (await http.get("/metrics")).text
                status = (await http.get("/api/status")).json()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(15):
                await sup.shutdown()
                shutdown.set()
            nursery.cancel_scope.cancel()
    a = doc["components"]["a"]["metrics"]
    assert a == {"cache_hits": 41, "hit_ratio": 0.25, "total_concepts": 10,
                 "avg_latency_ms": 20.0}
    assert doc["components"]["c"]["metrics"] == {}
    assert status["components"]["b"]["metrics"]["total_concepts"] == 30
    # The protocol's five: summed over components, avg_latency_ms averaged.
    assert doc["metrics"]["total_concepts"] == 40
    assert doc["metrics"]["avg_latency_ms"] == 40.0
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    key = ("control_center_component_metric", (("component", "a"), ("name", "cache_hits")))
    assert samples[key] == 41
    assert samples[("control_center_component_metric",
                    (("component", "b"), ("name", "hit_ratio")))] == 0.25
    refused = [line.text for line in sup.log("a").tail(1000) if "refused" in line.text]
    assert refused == ["metric 'Bad Name' refused: a name must match [a-z_][a-z0-9_]* "
                       "(at most 64 characters)"]
