"""The snapshot both benchmark servers broadcast: the contract's shape, 4 components.

The timestamp carries microseconds (still ISO-8601 UTC ending in "Z") so the
clients can measure lag (receipt time minus metrics.timestamp) finely.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_doc(now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    stamp = iso(now)
    components = {}
    for i, (cid, name) in enumerate((("storage", "Storage Engine"), ("api", "Sutra API"),
                                     ("workload", "Workload"), ("worker", "Worker"))):
        components[cid] = {
            "name": name, "state": "running", "pid": os.getpid() + i, "uptime": 3600.5 + i,
            "cpu_percent": 2.1, "memory_mb": 45.2, "error": None, "last_updated": stamp,
            "plugin": "process", "restarts": 0, "exit_code": None, "health": "healthy",
            "next_restart_in": None, "depends_on": [],
        }
    return {"components": components, "metrics": {
        "timestamp": stamp, "total_concepts": 1000, "total_associations": 5000,
        "storage_size_mb": 12.5, "queries_per_second": 10.0, "avg_latency_ms": 1.2,
        "cpu_percent": 5.2, "memory_percent": 45.1}}


def raise_fd_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
