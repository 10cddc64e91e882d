"""A reader that plugins use to validate their component options.

    def validate_config(component_id, options):
        opts = OptionReader(options)
        port = opts.integer("port", default=8100, minimum=1, maximum=65535)
        opts.finish()           # unknown keys -> OptionError with a suggestion
        return {"port": port}
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from core.errors import OptionError, closest

_MISSING: Any = object()


def _type_name(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


class OptionReader:
    """Reads typed options out of a mapping and remembers which keys were used."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self._options = dict(options)
        self._seen: set[str] = set()

    def _get(self, key: str, default: Any) -> Any:
        self._seen.add(key)
        if key in self._options:
            return self._options[key]
        if default is _MISSING:
            raise OptionError(key, "is required")
        return default

    def string(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is not default and not isinstance(value, str):
            raise OptionError(key, f"expected a string, got {_type_name(value)}")
        return value

    def boolean(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is not default and not isinstance(value, bool):
            raise OptionError(key, f"expected true or false, got {_type_name(value)}")
        return value

    def integer(self, key: str, default: Any = _MISSING, *, minimum: int | None = None,
                maximum: int | None = None) -> Any:
        value = self._get(key, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise OptionError(key, f"expected an integer, got {_type_name(value)}")
        if minimum is not None and value < minimum:
            raise OptionError(key, f"expected an integer >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise OptionError(key, f"expected an integer <= {maximum}, got {value}")
        return value

    def number(self, key: str, default: Any = _MISSING, *, minimum: float | None = None) -> Any:
        value = self._get(key, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise OptionError(key, f"expected a number, got {_type_name(value)}")
        if minimum is not None and value < minimum:
            raise OptionError(key, f"expected a number >= {minimum}, got {value}")
        return float(value)

    def command(self, key: str, default: Any = _MISSING) -> Any:
        """A command: a list of strings, or one string split like a shell would."""
        value = self._get(key, default)
        if value is default:
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
                                   f"{_type_name(value)}")
        if not argv:
            raise OptionError(key, "expected a non-empty command")
        return argv

    def string_table(self, key: str, default: Any = _MISSING) -> Any:
        """A table whose values are all strings (e.g. environment variables)."""
        value = self._get(key, default)
        if value is default:
            return value
        if not isinstance(value, dict):
            raise OptionError(key, f"expected a table of strings, got {_type_name(value)}")
        for k, v in value.items():
            if not isinstance(v, str):
                raise OptionError(f"{key}.{k}", f"expected a string, got {_type_name(v)}")
        return dict(value)

    def finish(self) -> None:
        """Raise OptionError for the first key that no reader call asked for."""
        for key in self._options:
            if key not in self._seen:
                hint = closest(key, self._seen)
                suffix = f"; did you mean {hint!r}?" if hint else ""
                known = ", ".join(sorted(self._seen)) or "none"
                raise OptionError(key, f"unknown key (valid keys: {known}){suffix}")
