"""Storage component plugin: runs and observes the reference storage engine.

    [components.storage]
    plugin = "storage"
    port = 7701               # the engine's loopback port
    host = "127.0.0.1"
    data_dir = "data/storage" # default: the component's own data directory
    sync = "full"             # "full" survives power loss, "normal" a crash only
    user = "cc-storage"       # also group, umask: as for the process plugin

The probe reads the engine's /stats (concepts, associations, size on disk);
stop asks the engine to checkpoint and exit before the core's signals.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core import ComponentInfo, Launch, OptionError, OptionReader, Probe, hookimpl
from plugins.jsonhttp import Unreachable, fetch_stats, read_host_port, request
from plugins.process import launch_run_as, read_run_as


@hookimpl
def validate_config(component_id: str, options: Mapping[str, Any]) -> Mapping[str, Any]:
    opts = OptionReader(options)
    host, port = read_host_port(opts, 7701)
    data_dir = opts.string("data_dir", None)
    if data_dir is not None and not data_dir.strip():
        raise OptionError("data_dir", "expected a directory path, got an empty string")
    sync = opts.string("sync", "full")
    if sync not in ("full", "normal"):
        raise OptionError("sync", f'expected "full" or "normal", got {sync!r}')
    run_as = read_run_as(opts, options)
    opts.finish()
    return {**run_as, "host": host, "port": port, "data_dir": data_dir, "sync": sync}


def _data_dir(component: ComponentInfo) -> Path:
    configured = component.options.get("data_dir")
    if configured is None:
        return component.data_dir
    return (component.config_dir / Path(configured).expanduser()).resolve()


@hookimpl
def start(component: ComponentInfo) -> Launch:
    opts = component.options
    data_dir = _data_dir(component)
    data_dir.mkdir(parents=True, exist_ok=True)
    return Launch(argv=(sys.executable, "-m", "plugins.storage.engine",
                        "--data-dir", str(data_dir), "--host", opts.get("host", "127.0.0.1"),
                        "--port", str(opts.get("port", 7701)),
                        "--sync", opts.get("sync", "full")),
                  # The engine is a module of this checkout: run it from the
                  # directory that holds the `plugins` package.
                  cwd=str(Path(__file__).resolve().parents[2]), **launch_run_as(opts))


@hookimpl
def probe(component: ComponentInfo, pid: int) -> Probe:
    host, port = component.options.get("host", "127.0.0.1"), component.options.get("port", 7701)
    body, failed = fetch_stats(host, port, "storage engine")
    if failed is not None:
        return Probe(healthy=False, error=failed)
    metrics = {k: float(body[k]) for k in ("total_concepts", "total_associations",
                                           "storage_size_mb") if k in body}
    return Probe(healthy=True, metrics=metrics)


@hookimpl
def stop(component: ComponentInfo, pid: int) -> None:
    """POST /shutdown, then wait (bounded) until the engine stops listening."""
    host, port = component.options.get("host", "127.0.0.1"), component.options.get("port", 7701)
    try:
        request(host, port, "POST", "/shutdown")
    except Unreachable:
        return  # not answering: the core's signals take over
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            request(host, port, "GET", "/health", timeout=0.5)
        except Unreachable:
            return  # listener closed: checkpoint done
        time.sleep(0.05)
