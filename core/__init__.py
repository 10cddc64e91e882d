"""Control Center: a plugin-based process supervisor with a live dashboard.

This module is the one face for plugin authors: everything a plugin may use
is exported here, and `core.testing` holds the utilities for a plugin's
tests; every other module of the package is internal. Reference:
docs/plugin-api.md; a complete example: docs/plugins.md.
"""

from __future__ import annotations

import pluggy

from core.errors import OptionError
from core.hookspecs import PROJECT as _PROJECT
from core.model import PLUGIN_METRICS, ComponentInfo, Launch, Probe
from core.options import OptionReader, UnknownOptionError

#: Marks a plugin's hook implementations: ``@hookimpl def start(component): ...``
hookimpl = pluggy.HookimplMarker(_PROJECT)

__all__ = [
    "PLUGIN_METRICS",
    "ComponentInfo",
    "Launch",
    "OptionError",
    "OptionReader",
    "Probe",
    "UnknownOptionError",
    "hookimpl",
]
