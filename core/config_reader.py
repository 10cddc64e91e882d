"""Reading one table of config.toml: typed keys with their bounds, sizes, signals.

core.config parses the file with these; every mistake is a ConfigError that
names the file, the key and what was expected.
"""

from __future__ import annotations

import math
import re
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core import schema
from core.errors import ConfigError, did_you_mean
from core.options import describe as _describe


class _Reader:
    """Typed access to one TOML table, raising ConfigError with the key path."""

    def __init__(self, path: Path, prefix: str, table: Mapping[str, Any]) -> None:
        self.path = str(path)
        self.prefix = prefix
        self.table = table

    def error(self, key: str | None, message: str) -> ConfigError:
        full = f"{self.prefix}.{key}" if key else self.prefix
        return ConfigError(self.path, full, message)

    def check_keys(self, allowed: set[str], *, extra_ok: bool = False) -> None:
        if extra_ok:
            return
        for key in self.table:
            if key not in allowed:
                suffix = did_you_mean(key, allowed)
                raise self.error(key, f"unknown key{suffix}")

    def get(self, key: str, default: Any, kind: type | tuple[type, ...], expected: str) -> Any:
        if key not in self.table:
            return default
        value = self.table[key]
        ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in (
            kind if isinstance(kind, tuple) else (kind,)))
        if not ok:
            raise self.error(key, f"expected {expected}, got {_describe(value)}")
        return value

    def string(self, key: str, default: Any) -> Any:
        value = self.get(key, default, str, "a string")
        if isinstance(value, str) and not value.strip():
            raise self.error(key, "expected a non-empty string")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        return self.get(key, default, bool, "true or false")

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self.get(key, default, int, "an integer")
        if not lo <= value <= hi:
            raise self.error(key, f"expected an integer from {lo} to {hi}, got {value}")
        return value

    def number(self, key: str, default: float, lo: float, hi: float = math.inf) -> float:
        value = self.get(key, default, (int, float), "a number")
        if not (lo <= value <= hi) or math.isnan(value):
            bounds = f">= {lo}" if hi == math.inf else f"from {lo} to {hi}"
            raise self.error(key, f"expected a number {bounds}, got {value}")
        return float(value)

    def path_value(self, key: str, default: Path | None, base: Path) -> Path | None:
        value = self.string(key, None)
        if value is None:
            return None if default is None else (base / default)
        return base / Path(value).expanduser()

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(key, list(default), list, "an array of strings")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{key}[{i}]", f"expected a string, got {_describe(item)}")
        return tuple(value)


def _parse_signal(reader: _Reader, key: str, default: int) -> int:
    value = reader.get(key, None, (str, int), 'a signal name such as "SIGTERM"')
    if value is None:
        return default
    if isinstance(value, int):
        valid = {s.value for s in signal.Signals}
        if value not in valid:
            raise reader.error(key, f"expected a signal number, got {value}")
        return value
    name = value.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return signal.Signals[name].value
    except KeyError:
        names = [s.name for s in signal.Signals]
        suffix = did_you_mean(name, names)
        raise reader.error(key, f"unknown signal {value!r}{suffix}") from None


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}
#: The smallest memory_max: below it not even an interpreter starts.
MIN_SIZE = 2**20


def _size(r: _Reader, name: str) -> int | None:
    """A size such as "512M" (K/M/G: powers of 1024) or an integer of bytes, >= 1M."""
    value = r.get(name, None, (str, int), 'a size such as "512M"')
    if value is None:
        return None
    found = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if isinstance(value, str) and found is None:
        raise r.error(name, f'expected a size such as "512M" (K, M or G), got {value!r}')
    size = value if isinstance(value, int) else int(
        float(found.group(1)) * _UNITS[found.group(2).lower()])  # type: ignore[union-attr]
    if size < MIN_SIZE:
        raise r.error(name, f"expected at least 1M, got {value!r}")
    return size


def _read(r: _Reader, key: schema.Key, base: Path) -> Any:
    """One key by its definition in core.schema: type, default and bounds."""
    kind, name = key.kind, key.name
    if kind == "size":
        return _size(r, name)
    if kind == "number" and key.default is None and name not in r.table:
        return None
    if kind == "integer":
        assert key.low is not None and key.high is not None, name  # integers have bounds
        return r.integer(name, key.default, int(key.low), int(key.high))
    if kind == "number":
        high = math.inf if key.high is None else key.high
        return r.number(name, key.default, key.low if key.low is not None else -math.inf, high)
    if kind == "boolean":
        return r.boolean(name, key.default)
    if kind == "strings":
        return r.strings(name, key.default)
    if kind == "paths":
        value = r.table.get(name)
        if value is not None and not isinstance(value, str | list):
            raise r.error(name, f"expected a path (string) or an array of paths, got "
                                f"{_describe(value)}")
        found = r.strings(name, key.default) if not isinstance(value, str) else (
            r.string(name, None),)
        return tuple(base / Path(p).expanduser() for p in found)
    if kind == "integers":
        value = r.get(name, list(key.default), list, "an array of integers")
        for i, item in enumerate(value):
            if not isinstance(item, int) or isinstance(item, bool):
                raise r.error(f"{name}[{i}]", f"expected an integer, got {_describe(item)}")
            if key.low is not None and key.high is not None and not (
                    key.low <= item <= key.high):
                raise r.error(f"{name}[{i}]", f"expected an integer from {int(key.low)} to "
                                              f"{int(key.high)}, got {item}")
        return tuple(value)
    if kind == "path":
        default = None if key.default is None else Path(key.default)
        return r.path_value(name, default, base)
    if kind == "signal":
        return _parse_signal(r, name, signal.Signals[key.default].value)
    if kind == "choice":
        value = r.string(name, key.default)
        if value not in key.choices:
            raise r.error(name, f"expected one of {', '.join(map(repr, key.choices))}, "
                                f"got {value!r}")
        return value
    return r.string(name, key.default)


def _read_token_file(r: _Reader, path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise r.error("token_file", f"cannot read {path}: "
                                    f"{getattr(exc, 'strerror', None) or exc}") from None
    if not token:
        raise r.error("token_file", f"expected a token, {path} is empty")
    return token
