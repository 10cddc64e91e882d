"""Values that cross the boundary between the core and plugins.

All frozen: they are handed to plugin hooks running in worker threads and
must not change under the core's feet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

#: The snapshot's `metrics` keys a plugin may contribute through a Probe.
PLUGIN_METRICS = (
    "total_concepts",
    "total_associations",
    "storage_size_mb",
    "queries_per_second",
    "avg_latency_ms",
)

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class ComponentInfo:
    """What a plugin knows about the component it drives.

    `options` holds the plugin-specific keys of `[components.<id>]`, as
    returned by the plugin's `validate_config` hook. `data_dir` is this
    component's own directory (created by the core before `start`);
    `config_dir` is the directory of config.toml, against which relative
    paths in options are resolved.
    """

    id: str
    name: str
    plugin: str
    options: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    data_dir: Path = Path(".")
    config_dir: Path = Path(".")


@dataclass(frozen=True)
class Launch:
    """The process a `start` hook asks the core to run.

    The core spawns it (own session, death signal, drained output) so that
    nothing a plugin starts can be orphaned. `env` is merged over the
    supervisor's environment; `cwd` None means the config directory.
    `probe` False says this run has nothing to check beyond being alive: the
    core then skips the `probe` hook for it (no worker thread per tick).
    `health`, an ``http://`` or ``https://`` URL (a 2xx answer is healthy) or
    ``tcp://host:port`` (a connection is healthy), is a check the core runs
    itself on its event loop instead of calling the `probe` hook.
    """

    argv: tuple[str, ...]
    cwd: str | None = None
    env: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    probe: bool = True
    health: str | None = None

    def __post_init__(self) -> None:
        if not self.argv or not all(isinstance(a, str) for a in self.argv):
            raise TypeError(f"Launch.argv must be a non-empty sequence of str, got {self.argv!r}")
        object.__setattr__(self, "argv", tuple(self.argv))
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))


@dataclass(frozen=True)
class Probe:
    """What a `probe` hook found.

    `healthy` False puts `error` in the component's error field (the
    component keeps running; the restart policy is about exits, not health).
    `metrics` contributes to the snapshot's `metrics` (keys in
    PLUGIN_METRICS; others are ignored).
    """

    healthy: bool = True
    error: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
