"""`GET /metrics`: the latest snapshot in Prometheus' text format.

A collector of our own in a registry of our own (two servers in one
process, as in the tests, must not share the global registry). It reads
`hub.latest` at scrape time: a scrape costs nothing between scrapes and
never disagrees with what the dashboards show.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from core.hub import Hub
from core.states import ComponentState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: snapshot metric -> (Prometheus name, help)
_SYSTEM = {
    "cpu_percent": ("control_center_system_cpu_percent", "System-wide CPU use, percent."),
    "memory_percent": ("control_center_system_memory_percent", "System memory in use, percent."),
    "total_concepts": ("control_center_total_concepts", "Concepts in the storage engine."),
    "total_associations": ("control_center_total_associations",
                           "Associations in the storage engine."),
    "storage_size_mb": ("control_center_storage_size_bytes", "Storage size on disk, bytes."),
    "queries_per_second": ("control_center_queries_per_second", "API queries per second."),
    "avg_latency_ms": ("control_center_avg_latency_seconds", "API mean latency, seconds."),
}
_SCALE = {"storage_size_mb": 1024 * 1024, "avg_latency_ms": 0.001}


class _SnapshotCollector(Collector):
    def __init__(self, hub: Hub, clients: Callable[[], int]) -> None:
        self.hub = hub
        self.clients = clients

    def collect(self) -> Iterator[Any]:
        ws = GaugeMetricFamily("control_center_websocket_clients",
                               "Connected WebSocket clients.")
        ws.add_metric([], self.clients())
        yield ws
        snap = self.hub.latest
        if snap is None:
            return
        comps = snap.doc.get("components") or {}
        state = GaugeMetricFamily("control_center_component_state",
                                  "1 for the component's current state.",
                                  labels=["component", "state"])
        up = GaugeMetricFamily("control_center_component_up",
                               "1 when the component is running.", labels=["component"])
        restarts = CounterMetricFamily("control_center_component_restarts",
                                       "Restarts by the restart policy.", labels=["component"])
        cpu = GaugeMetricFamily("control_center_component_cpu_percent",
                                "The component process' CPU use, percent.",
                                labels=["component"])
        mem = GaugeMetricFamily("control_center_component_memory_bytes",
                                "The component process' resident memory, bytes.",
                                labels=["component"])
        own = GaugeMetricFamily("control_center_component_metric",
                                "A component's own figure from its probe, by name.",
                                labels=["component", "name"])
        for cid, c in comps.items():
            for name, value in (c.get("metrics") or {}).items():
                own.add_metric([cid, name], float(value))
            for s in ComponentState:
                state.add_metric([cid, s.value], 1.0 if c.get("state") == s.value else 0.0)
            up.add_metric([cid], 1.0 if c.get("state") == "running" else 0.0)
            restarts.add_metric([cid], float(c.get("restarts") or 0))
            if c.get("cpu_percent") is not None:
                cpu.add_metric([cid], float(c["cpu_percent"]))
            if c.get("memory_mb") is not None:
                mem.add_metric([cid], float(c["memory_mb"]) * 1024 * 1024)
        yield from (state, up, restarts, cpu, mem, own)
        metrics = snap.doc.get("metrics") or {}
        for key, (name, text) in _SYSTEM.items():
            value = metrics.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                family = GaugeMetricFamily(name, text)
                family.add_metric([], float(value) * _SCALE.get(key, 1))
                yield family


def make_registry(hub: Hub, clients: Callable[[], int]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(hub, clients))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
