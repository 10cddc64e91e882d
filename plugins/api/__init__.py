"""API component plugin: runs and observes the reference Sutra API server.

    [components.api]
    plugin = "api"
    port = 7702                               # the API's loopback port
    host = "127.0.0.1"
    storage_url = "http://127.0.0.1:7701"     # the storage engine it fronts
    window = 10                               # seconds behind qps and latency

The probe reads the API's /stats and contributes `queries_per_second` and
`avg_latency_ms`; the API is unhealthy while its storage engine is down.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from core import ComponentInfo, Launch, OptionError, OptionReader, Probe, hookimpl
from plugins.jsonhttp import fetch_stats, read_host_port
from plugins.process import launch_run_as, read_run_as


@hookimpl
def validate_config(component_id: str, options: Mapping[str, Any]) -> Mapping[str, Any]:
    opts = OptionReader(options)
    host, port = read_host_port(opts, 7702)
    storage_url = opts.string("storage_url", "http://127.0.0.1:7701")
    try:
        parts = urlsplit(storage_url)
        valid = parts.scheme == "http" and bool(parts.hostname) and parts.port is not None
    except ValueError:
        valid = False
    if not valid:
        raise OptionError("storage_url", f'expected "http://host:port", got {storage_url!r}')
    window = opts.integer("window", 10, minimum=1, maximum=3600)
    run_as = read_run_as(opts, options)
    opts.finish()
    return {**run_as, "host": host, "port": port, "storage_url": storage_url, "window": window}


@hookimpl
def start(component: ComponentInfo) -> Launch:
    opts = component.options
    return Launch(argv=(sys.executable, "-m", "plugins.api.server",
                        "--host", opts.get("host", "127.0.0.1"),
                        "--port", str(opts.get("port", 7702)),
                        "--storage-url", opts.get("storage_url", "http://127.0.0.1:7701"),
                        "--window", str(opts.get("window", 10))),
                  cwd=str(Path(__file__).resolve().parents[2]), **launch_run_as(opts))


@hookimpl
def probe(component: ComponentInfo, pid: int) -> Probe:
    host, port = component.options.get("host", "127.0.0.1"), component.options.get("port", 7702)
    body, failed = fetch_stats(host, port, "API")
    if failed is not None:
        return Probe(healthy=False, error=failed)
    metrics = {k: float(body[k]) for k in ("queries_per_second", "avg_latency_ms") if k in body}
    if body.get("storage") != "up":
        return Probe(healthy=False, error=body.get("storage_error") or "storage engine down",
                     metrics=metrics)
    return Probe(healthy=True, metrics=metrics)
