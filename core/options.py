"""A reader that plugins use to validate their component options.

    from core import OptionReader, hookimpl

    @hookimpl
    def validate_config(component_id, options):
        opts = OptionReader(options)
        port = opts.integer("port", 8100, minimum=1, maximum=65535)
        name = opts.string("name_prefix")   # no default: the key is required
        opts.finish()           # unknown keys -> OptionError with a suggestion
        return {"port": port, "name_prefix": name}

Rules shared by every method:

- Without ``default`` the key is required: a missing key raises
  ``OptionError(key, "is required")``.
- A key that is absent returns ``default`` exactly as given, unchecked (so
  ``None`` can mean "not set").
- A key that is present is always checked (type, then range), whatever its
  value, even when it equals the default.
- ``minimum`` and ``maximum`` are inclusive.
- Every error is an ``OptionError(key, message)`` in the core's wording
  ("expected an integer, got a float (29612.0)"); the core prefixes the key
  with ``components.<id>.`` and the file name.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from typing import Any

from core.errors import OptionError, did_you_mean

_MISSING: Any = object()

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
               list: "an array", dict: "a table"}


def type_name(value: object) -> str:
    """How an error names the type of a value: "an integer", "a float", "a table"."""
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def describe(value: object) -> str:
    """A value as an error shows it: its type, and the value itself when it is short."""
    name = type_name(value)
    if isinstance(value, dict | list):
        return name
    shown = repr(value)
    return f"{name} ({shown})" if len(shown) <= 60 else name


class UnknownOptionError(OptionError):
    """`finish` found a key no reader call asked for; `known` holds the keys that were."""

    def __init__(self, key: str, known: frozenset[str]) -> None:
        self.known = known
        suffix = did_you_mean(key, known)
        listed = ", ".join(sorted(known)) or "none"
        super().__init__(key, f"unknown key (valid keys: {listed}){suffix}")


class OptionReader:
    """Reads typed options out of a mapping and remembers which keys were asked for.

    Create one per ``validate_config`` call, read every key the plugin knows
    (each method returns the checked value), then call :meth:`finish`, which
    rejects whatever key was not read: a typo in config.toml is an error
    with a suggestion, never silently ignored.
    """

    def __init__(self, options: Mapping[str, Any]) -> None:
        self._options = dict(options)
        self._seen: set[str] = set()

    def _get(self, key: str, default: Any) -> tuple[bool, Any]:
        """(present, value): the key's value, or the default when it is absent."""
        self._seen.add(key)
        if key in self._options:
            return True, self._options[key]
        if default is _MISSING:
            raise OptionError(key, "is required")
        return False, default

    def string(self, key: str, default: Any = _MISSING) -> Any:
        """A string (empty allowed: check ``.strip()`` yourself if it must not be)."""
        present, value = self._get(key, default)
        if present and not isinstance(value, str):
            raise OptionError(key, f"expected a string, got {describe(value)}")
        return value

    def boolean(self, key: str, default: Any = _MISSING) -> Any:
        """``true`` or ``false``; no other value is taken for one (not 0, not "yes")."""
        present, value = self._get(key, default)
        if present and not isinstance(value, bool):
            raise OptionError(key, f"expected true or false, got {describe(value)}")
        return value

    def integer(self, key: str, default: Any = _MISSING, *, minimum: int | None = None,
                maximum: int | None = None) -> Any:
        """An integer within ``[minimum, maximum]`` (either bound optional).

        A float is refused even when it is whole (``8080.0``), and so is a
        boolean.
        """
        present, value = self._get(key, default)
        if not present:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise OptionError(key, f"expected an integer, got {describe(value)}")
        _check_range(key, "an integer", value, minimum, maximum)
        return value

    def number(self, key: str, default: Any = _MISSING, *, minimum: float | None = None,
               maximum: float | None = None) -> Any:
        """A number (integer or float) within ``[minimum, maximum]``, returned as a float.

        NaN and the infinities are refused.
        """
        present, value = self._get(key, default)
        if not present:
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise OptionError(key, f"expected a number, got {describe(value)}")
        if not math.isfinite(value):
            raise OptionError(key, f"expected a finite number, got {value}")
        _check_range(key, "a number", value, minimum, maximum)
        return float(value)

    def command(self, key: str, default: Any = _MISSING) -> Any:
        """A command line as a list of strings.

        Accepts an array of strings, or one string split like a POSIX shell
        would (quotes respected, no expansion). An empty command is refused.
        """
        present, value = self._get(key, default)
        if not present:
            return value
        if isinstance(value, str):
            try:
                argv = shlex.split(value)
            except ValueError as exc:
                raise OptionError(key, f"cannot split the command string: {exc}") from None
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            argv = list(value)
        else:
            raise OptionError(key, f"expected a string or an array of strings, got "
                                   f"{describe(value)}")
        if not argv:
            raise OptionError(key, "expected a non-empty command")
        return argv

    def string_table(self, key: str, default: Any = _MISSING) -> Any:
        """A table whose values are all strings (environment variables, headers).

        Returns a new ``dict``; a non-string value is reported as ``key.name``.
        """
        present, value = self._get(key, default)
        if not present:
            return value
        if not isinstance(value, dict):
            raise OptionError(key, f"expected a table of strings, got {describe(value)}")
        for k, v in value.items():
            if not isinstance(v, str):
                raise OptionError(f"{key}.{k}", f"expected a string, got {describe(v)}")
        return dict(value)

    @property
    def keys(self) -> frozenset[str]:
        """Every key asked for so far (present or not)."""
        return frozenset(self._seen)

    def finish(self) -> None:
        """Raise for the first key that no reader call asked for.

        The error (an ``OptionError``) lists the valid keys and suggests the
        closest one; the core adds the common keys (``restart``,
        ``depends_on``, ...) to the suggestion.
        """
        for key in self._options:
            if key not in self._seen:
                raise UnknownOptionError(key, frozenset(self._seen))


def _check_range(key: str, kind: str, value: float, minimum: float | None,
                 maximum: float | None) -> None:
    low = minimum is not None and value < minimum
    high = maximum is not None and value > maximum
    if not (low or high):
        return
    if minimum is not None and maximum is not None:
        raise OptionError(key, f"expected {kind} from {minimum} to {maximum}, got {value}")
    if low:
        raise OptionError(key, f"expected {kind} >= {minimum}, got {value}")
    raise OptionError(key, f"expected {kind} <= {maximum}, got {value}")
