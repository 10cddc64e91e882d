"""The plugin manager: built-ins, then entry points, then check_pending.

Each component's hooks are called through a hook caller restricted to the
component's own plugin (pluggy's subset_hook_caller), so one plugin's answer
never competes with another's.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import pluggy

from core import hookspecs
from core.errors import OptionError, PluginError

ENTRY_POINT_GROUP = "control_center"
BUILTINS = ("process", "storage", "api")


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
        if load_entry_points:
            # pluggy skips entry points whose name is already registered, so a
            # third-party package cannot shadow a built-in by accident.
            self._pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        self._pm.check_pending()
        self._callers: dict[tuple[str, str], Any] = {}

    @property
    def names(self) -> set[str]:
        return {name for name, _ in self._pm.list_name_plugin() if name is not None}

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
        """Run the plugin's validate_config; wraps plugin bugs as OptionError-free errors."""
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
