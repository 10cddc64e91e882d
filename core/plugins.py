"""The plugin manager: built-ins, then entry points, then check_pending.

Each component's hooks are called through a hook caller restricted to the
component's own plugin (pluggy's subset_hook_caller), so one plugin's answer
never competes with another's.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Mapping
from typing import Any

import pluggy

from core import hookspecs
from core.errors import OptionError, PluginError

ENTRY_POINT_GROUP = "control_center"
BUILTINS = ("process", "storage", "api")

log = logging.getLogger("control_center")


class PluginManager:
    """Knows the installed plugins by name and calls one plugin's hooks."""

    def __init__(self, *, load_entry_points: bool = True,
                 extra: Mapping[str, object] | None = None) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        for name in BUILTINS:
            self._pm.register(importlib.import_module(f"plugins.{name}"), name=name)
        for name, plugin in (extra or {}).items():
            self._pm.register(plugin, name=name)
        #: Installed plugins that failed to load: name -> why. Only a component
        #: that uses one is affected (its config is rejected with the reason).
        self.broken: dict[str, str] = {}
        if load_entry_points:
            self._load_entry_points()
        self._pm.check_pending()
        self._callers: dict[tuple[str, str], Any] = {}

    def _load_entry_points(self) -> None:
        # Like pluggy's load_setuptools_entrypoints, but a package that fails
        # to import (or registers badly) is recorded instead of stopping the
        # supervisor and every component with it.
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if self._pm.get_plugin(ep.name) is not None or self._pm.is_blocked(ep.name):
                continue  # a built-in or an earlier entry point of that name wins
            try:
                self._pm.register(ep.load(), name=ep.name)
            except Exception as exc:
                why = (f"entry point {ep.name} = {ep.value} failed to load: "
                       f"{type(exc).__name__}: {exc}")
                self.broken[ep.name] = why
                log.warning("plugin %r not loaded: %s", ep.name, why)

    @property
    def names(self) -> set[str]:
        """Every installed plugin name, the broken ones included."""
        loaded = {name for name, _ in self._pm.list_name_plugin() if name is not None}
        return loaded | set(self.broken)

    def caller(self, plugin: str, hook: str) -> Any:
        """The hook `hook` restricted to the plugin named `plugin`."""
        key = (plugin, hook)
        found = self._callers.get(key)
        if found is None:
            target = self._pm.get_plugin(plugin)
            if target is None:
                raise PluginError(f"no plugin named {plugin!r} is installed")
            others = [p for p in self._pm.get_plugins() if p is not target]
            found = self._pm.subset_hook_caller(hook, remove_plugins=others)
            self._callers[key] = found
        return found

    def implements(self, plugin: str, hook: str) -> bool:
        return bool(self.caller(plugin, hook).get_hookimpls())

    def call(self, plugin: str, hook: str, **kwargs: Any) -> Any:
        """Call one plugin's hook; None when it does not implement it."""
        results = self.caller(plugin, hook)(**kwargs)
        return results[0] if results else None

    def validate(self, component_id: str, plugin: str,
                 options: Mapping[str, Any]) -> Mapping[str, Any]:
        """Run the plugin's validate_config; a plugin bug becomes an OptionError."""
        if plugin in self.broken:
            raise OptionError("plugin", f"plugin {plugin!r} is installed but "
                                        f"{self.broken[plugin]}")
        try:
            result = self.call(plugin, "validate_config", component_id=component_id,
                               options=dict(options))
        except OptionError:
            raise
        except Exception as exc:  # a plugin bug, reported against its component
            raise OptionError("plugin", f"plugin {plugin!r} failed to validate its options: "
                                        f"{type(exc).__name__}: {exc}") from None
        if result is None:
            return options
        if not isinstance(result, Mapping):
            raise OptionError("plugin", f"plugin {plugin!r} returned {type(result).__name__} "
                                        "from validate_config, expected a mapping or None")
        return result
