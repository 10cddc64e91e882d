"""The plugin manager: built-ins, then entry points, then check_pending.

Each component's hooks are called through a hook caller restricted to the
component's own plugin (pluggy's subset_hook_caller), so one plugin's answer
never competes with another's.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import pluggy

from core import hookspecs
from core.errors import OptionError, PluginError

ENTRY_POINT_GROUP = "control_center"
BUILTINS = ("process", "storage", "api")

log = logging.getLogger("control_center")


def _dist(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else "an unknown distribution"


def _by_name(eps: Iterable[importlib.metadata.EntryPoint]
             ) -> list[tuple[str, list[importlib.metadata.EntryPoint]]]:
    """Entry points grouped by name; the same distribution and value counted once.

    One distribution can be listed twice (an editable install next to a
    stale .egg-info, a path on sys.path twice): that is not a conflict.
    """
    groups: dict[str, dict[tuple[str, str], importlib.metadata.EntryPoint]] = {}
    for ep in eps:
        groups.setdefault(ep.name, {}).setdefault((_dist(ep).lower(), ep.value), ep)
    return [(name, list(found.values())) for name, found in groups.items()]


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
        #: Entry point name -> "distribution: module" it was loaded from.
        self.sources: dict[str, str] = {}
        if load_entry_points:
            self._load_entry_points()
        self._pm.check_pending()
        self._callers: dict[tuple[str, str], Any] = {}

    def _load_entry_points(self) -> None:
        # Like pluggy's load_setuptools_entrypoints, but a package that fails
        # to import (or registers badly) is recorded instead of stopping the
        # supervisor and every component with it, and a name that two
        # distributions claim is refused rather than won by whichever the
        # import system lists first.
        for name, eps in _by_name(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)):
            if name in BUILTINS:
                for ep in eps:
                    if ep.value != f"plugins.{name}":
                        log.warning("entry point %s = %s of %s ignored: %r is a built-in "
                                    "plugin", name, ep.value, _dist(ep), name)
                continue
            if self._pm.get_plugin(name) is not None or self._pm.is_blocked(name):
                continue  # registered in-process (extra=) first
            if len(eps) > 1:
                owners = " and ".join(f"{_dist(ep)} ({ep.value})" for ep in eps)
                why = (f"the entry point name {name!r} is registered by {len(eps)} "
                       f"distributions: {owners}; uninstall one of them, or rename one "
                       "entry point")
                self.broken[name] = why
                log.warning("plugin %r not loaded: %s", name, why)
                continue
            ep = eps[0]
            self.sources[name] = f"{_dist(ep)}: {ep.value}"
            try:
                self._pm.register(ep.load(), name=name)
            except Exception as exc:
                why = (f"entry point {name} = {ep.value} failed to load: "
                       f"{type(exc).__name__}: {exc}")
                self.broken[name] = why
                log.warning("plugin %r not loaded: %s", name, why)

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, where it comes from, "ok" or why it is broken), sorted by name."""
        rows = []
        for name in sorted(self.names):
            if name in BUILTINS:
                source = f"built-in: plugins.{name}"
            else:
                source = self.sources.get(name, "registered in-process")
            rows.append((name, source, self.broken.get(name, "ok")))
        return rows

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
