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

#: The protocol's five plugin figures: a probe's metrics with these names also
#: fill the snapshot's top-level `metrics` (summed; avg_latency_ms averaged).
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

    Every hook but ``validate_config`` receives one as ``component``; it is
    built from ``[components.<id>]`` and does not change while the config
    stays the same (a reload that changes the table restarts the component
    with a new one).

    Fields:

    - ``id`` (str): the table name, ``"storage"`` for ``[components.storage]``;
      unique, letters, digits, ``-`` and ``_``.
    - ``name`` (str): the display name (the ``name`` key; default the id).
    - ``plugin`` (str): the plugin's entry point name (the ``plugin`` key).
    - ``options`` (read-only mapping): the plugin's own keys, as returned by
      its ``validate_config`` hook (defaults filled in). Default: empty.
    - ``data_dir`` (Path): this component's own directory,
      ``<[server] data_dir>/<id>`` (``data/<id>`` next to config.toml by
      default), absolute. The core creates it before every ``start`` call;
      it survives restarts and upgrades, nothing else writes to it.
      Default (outside the core, e.g. in a unit test): ``Path(".")``.
    - ``config_dir`` (Path): the directory of config.toml, absolute;
      resolve relative paths found in ``options`` against it. Default
      ``Path(".")``.
    - ``stop_timeout`` (float, seconds): the component's own; the whole
      stop is bounded by it, which a plugin that stops something the core's
      signals do not reach (a container) must know. Default 10.0.
    - ``env_file_env`` (read-only mapping of str to str): the variables of
      the component's ``env_file`` files (the core's key), read when the
      config was loaded, a later file winning. The core already puts them in
      the environment of every ``Launch`` beneath ``Launch.env``; a plugin
      whose work runs elsewhere (a container) passes them on beneath its own
      variables. Default: empty.
    - ``memory_max`` (int bytes or None): the component's ``memory_max`` (the
      core's key). The core restarts a component whose tree stays above it
      (and sets the kernel's limit on its cgroup where it can); a plugin whose
      work runs elsewhere (a container) also hands it to that engine.
      Default None: no limit.
    """

    id: str
    name: str
    plugin: str
    options: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    data_dir: Path = Path(".")
    config_dir: Path = Path(".")
    stop_timeout: float = 10.0
    env_file_env: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    memory_max: int | None = None


@dataclass(frozen=True)
class Launch:
    """The process a ``start`` hook asks the core to run.

    The core spawns it, never the plugin: its own session and process group,
    the death signal set (it dies with the supervisor), stdout and stderr
    drained into the component's log, ``CONTROL_CENTER_CHILD`` set in its
    environment, and its pid handed to ``probe`` and ``stop``.

    Fields:

    - ``argv`` (sequence of str, required): the program and its arguments;
      no shell. Stored as a tuple. Use ``sys.executable`` to run Python code
      with the supervisor's interpreter. Empty or non-str items raise
      ``TypeError``.
    - ``cwd`` (str or None, default None): the working directory; None means
      the directory of config.toml. A relative path is relative to the
      supervisor's working directory, so pass an absolute one.
    - ``env`` (mapping of str to str, default empty): variables set over the
      supervisor's own environment and the component's ``env_file`` values
      (nothing is removed).
    - ``probe`` (bool, default True): False says this run has nothing to
      check beyond being alive; the core then never calls the ``probe``
      hook for it (health is "healthy" as soon as it runs, no metrics).
    - ``health`` (str or None, default None): a check the core runs itself on
      its event loop instead of calling the ``probe`` hook: an ``http://`` or
      ``https://`` URL (a 2xx answer is healthy) or ``tcp://host:port`` (an
      accepted connection is healthy), bounded by ``probe_timeout``.
    - ``user`` (str or None, default None): the user name the process runs
      as. The supervisor must run as root to name another user (the core
      then switches uid and gid, initialises the user's supplementary
      groups and sets ``HOME``, ``USER`` and ``LOGNAME`` beneath ``env``);
      naming the supervisor's own user only sets those variables. Validate
      it in ``validate_config`` (the process plugin's keys do): at spawn an
      unknown user is a start failure.
    - ``group`` (str or None, default None): the group name it runs as;
      default the user's primary group (or the supervisor's own).
    - ``umask`` (int or None, default None): the file mode creation mask,
      e.g. ``0o022``; None keeps the supervisor's.
    """

    argv: tuple[str, ...]
    cwd: str | None = None
    env: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    probe: bool = True
    health: str | None = None
    user: str | None = None
    group: str | None = None
    umask: int | None = None

    def __post_init__(self) -> None:
        if not self.argv or not all(isinstance(a, str) for a in self.argv):
            raise TypeError(f"Launch.argv: expected a non-empty sequence of str, "
                            f"got {self.argv!r}")
        for name in ("user", "group"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise TypeError(f"Launch.{name}: expected a name (str) or None, got "
                                f"{value!r}")
        if self.umask is not None and (isinstance(self.umask, bool) or not isinstance(
                self.umask, int) or not 0 <= self.umask <= 0o777):
            raise TypeError(f"Launch.umask: expected an int from 0 to 0o777 or None, got "
                            f"{self.umask!r}")
        object.__setattr__(self, "argv", tuple(self.argv))
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))


@dataclass(frozen=True)
class Probe:
    """What a ``probe`` hook found; returning None is the same as ``Probe()``.

    Fields:

    - ``healthy`` (bool, default True): False makes the component's
      ``health`` "unhealthy" and shows ``error``. An unhealthy component
      keeps running: the restart policy acts on exits, not on health; what
      health changes is that components that ``depends_on`` it wait before
      they start.
    - ``error`` (str or None, default None): why it is unhealthy, shown in
      the component's ``error`` field (ignored while healthy). None while
      unhealthy shows "probe reported unhealthy".
    - ``metrics`` (mapping of str to int or float, default empty): this
      component's own figures for this tick, shown as its snapshot entry's
      ``metrics``, in Prometheus (``control_center_component_metric``) and
      on its dashboard card. Names must match ``[a-z_][a-z0-9_]*`` (at most
      64 characters, 64 metrics), values be finite numbers (not bool);
      anything else is left out, the reason written once to the
      component's log. The names in ``PLUGIN_METRICS`` also fill the
      snapshot's top-level ``metrics``, summed over components
      (``avg_latency_ms`` averaged).
      Two names are not summed: ``cpu_percent`` and ``memory_mb`` replace
      the component's own figures (those of the process the core watches)
      when its work runs elsewhere (a container).
    """

    healthy: bool = True
    error: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
