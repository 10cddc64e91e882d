"""config.toml -> frozen dataclasses, or one ConfigError naming file and key.

Relative paths in the file are resolved against the file's directory, so
the supervisor behaves the same whatever directory it is started from.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import signal
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from core import schema
from core.envfile import EnvFileError, read_env_files
from core.errors import ConfigError, OptionError, did_you_mean
from core.events import KINDS as EVENT_KINDS
from core.events import EventsConfig
from core.identity import AuthConfig, algorithm_for, load_public_key
from core.notify import NOTIFIER_KINDS, NotifyConfig
from core.options import UnknownOptionError
from core.options import describe as _describe
from core.signing import load_signing_key

RESTART_POLICIES = schema.RESTART_POLICIES


_S = schema.SERVER_KEYS
_C = schema.COMPONENT_KEYS


@dataclass(frozen=True)
class ServerConfig:
    """The `[server]` table; every key is described in core.schema.SERVER."""

    host: str = _S["host"].default
    port: int = _S["port"].default
    interval: float = _S["interval"].default
    token: str | None = None
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    max_clients: int = _S["max_clients"].default
    max_connections: int = _S["max_connections"].default
    max_connections_per_address: int = _S["max_connections_per_address"].default
    tls_cert: Path | None = None
    tls_key: Path | None = None
    signing_key: Path | None = None
    data_dir: Path = Path(_S["data_dir"].default)
    log_dir: Path = Path(_S["log_dir"].default)
    log_lines: int = _S["log_lines"].default
    log_max_bytes: int = _S["log_max_bytes"].default
    log_backups: int = _S["log_backups"].default
    history_seconds: float = _S["history_seconds"].default
    max_message_bytes: int = _S["max_message_bytes"].default
    control_rate: float = _S["control_rate"].default
    message_rate: float = _S["message_rate"].default
    auth_failure_rate: float = _S["auth_failure_rate"].default
    cgroups: bool = _S["cgroups"].default


@dataclass(frozen=True)
class ComponentConfig:
    """One `[components.<id>]` table; the core's keys are described in core.schema.COMPONENT."""

    id: str
    plugin: str
    name: str
    autostart: bool = _C["autostart"].default
    restart: str = _C["restart"].default
    depends_on: tuple[str, ...] = ()
    stop_signal: int = signal.SIGTERM.value
    stop_timeout: float = _C["stop_timeout"].default
    start_timeout: float = _C["start_timeout"].default
    probe_timeout: float = _C["probe_timeout"].default
    backoff_initial: float = _C["backoff_initial"].default
    backoff_factor: float = _C["backoff_factor"].default
    backoff_max: float = _C["backoff_max"].default
    stable_after: float = _C["stable_after"].default
    max_failures: int = _C["max_failures"].default
    exit_codes: tuple[int, ...] = _C["exit_codes"].default
    health_cmd: tuple[str, ...] = ()
    env_file: tuple[Path, ...] = ()
    #: What the env_file files held when the config was read (core.envfile).
    env_file_env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    watch: tuple[str, ...] = ()
    #: Bytes (memory_max) and cores (cpu_max); None: no limit.
    memory_max: int | None = None
    cpu_max: float | None = None
    #: None: no `instances` key, one plain entry `ID`; N: entries `ID.0` ... (core.instances).
    instances: int | None = None
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: Set on the configs of instances only: the component's id, and this one's index.
    instance_of: str | None = None
    instance: int | None = None

    def same_launch(self, other: ComponentConfig) -> bool:
        """True when nothing but presentation (name, watch) differs: no restart needed."""
        from dataclasses import replace

        return replace(self, name=other.name, watch=other.watch) == other


@dataclass(frozen=True)
class Config:
    path: Path
    server: ServerConfig
    #: In file order, which is also the start order among independent ones.
    components: Mapping[str, ComponentConfig]
    auth: AuthConfig = field(default_factory=AuthConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    notify: tuple[NotifyConfig, ...] = ()
    #: Other Control Centers to follow: core.remotes.RemoteConfig by name.
    remotes: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def config_dir(self) -> Path:
        return self.path.parent

    def start_order(self) -> list[str]:
        """Component ids ordered so every component comes after its dependencies."""
        order: list[str] = []
        done: set[str] = set()

        def visit(cid: str) -> None:
            if cid in done:
                return
            done.add(cid)
            for dep in self.components[cid].depends_on:
                visit(dep)
            order.append(cid)

        for cid in self.components:
            visit(cid)
        return order


#: "compression" is known only to be refused with its reason.
_SERVER_KEYS = set(schema.SERVER_KEYS) | {"compression"}
_COMMON_KEYS = set(schema.COMPONENT_KEYS)

#: validate(component_id, plugin, options) -> normalised options; raises OptionError.
Validator = Callable[[str, str, Mapping[str, Any]], Mapping[str, Any]]


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


def _parse_server(path: Path, table: Mapping[str, Any]) -> ServerConfig:
    r = _Reader(path, "server", table)
    r.check_keys(_SERVER_KEYS)
    base = path.parent
    values = {k.name: _read(r, k, base) for k in schema.SERVER if k.name != "token_file"}
    cert, key = values["tls_cert"], values["tls_key"]
    if (cert is None) != (key is None):
        missing = "tls_key" if key is None else "tls_cert"
        raise r.error(missing, "tls_cert and tls_key go together; set both or neither")
    for p, name in ((cert, "tls_cert"), (key, "tls_key")):
        if p is not None and not p.is_file():
            raise r.error(name, f"expected a readable file, {p} does not exist")
    if "compression" in table:
        raise r.error("compression", "is no longer supported: WebSocket messages are never "
                      "compressed (permessage-deflate cost +37 % server CPU and ~200 KB per "
                      "client); remove the key")
    values["allowed_hosts"] = tuple(h.lower().rstrip(".") for h in values["allowed_hosts"])
    if values["signing_key"] is not None:
        try:
            load_signing_key(values["signing_key"])
        except OSError as exc:
            raise r.error("signing_key", f"cannot read {values['signing_key']}: "
                                         f"{exc.strerror or exc}") from None
        except (ValueError, TypeError) as exc:
            raise r.error("signing_key", str(exc)) from None
    raw_file = r.string("token_file", None)
    if raw_file is not None:
        if values["token"] is not None:
            raise r.error("token_file", "token and token_file exclude each other; set one")
        values["token"] = _read_token_file(r, base / Path(os.path.expandvars(raw_file))
                                           .expanduser())
    return ServerConfig(**values)


def _parse_component(path: Path, cid: str, table: Any, plugins: set[str] | None,
                     validate: Validator | None) -> ComponentConfig:
    if not isinstance(table, dict):
        raise ConfigError(str(path), f"components.{cid}",
                          f"expected a table [components.{cid}], got {_describe(table)}")
    r = _Reader(path, f"components.{cid}", table)
    if not cid.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(str(path), f"components.{cid}",
                          "a component id may hold only letters, digits, '-' and '_'")
    plugin = r.string("plugin", None)
    if plugin is None:
        raise r.error("plugin", "is required: the plugin that drives this component "
                                "(e.g. \"process\")")
    if plugins is not None and plugin not in plugins:
        suffix = did_you_mean(plugin, plugins)
        raise r.error("plugin", f"unknown plugin {plugin!r} (installed: "
                                f"{', '.join(sorted(plugins))}){suffix}")
    if isinstance(table.get("health_cmd"), str):
        try:
            table = {**table, "health_cmd": shlex.split(table["health_cmd"])}
        except ValueError as exc:
            raise r.error("health_cmd", f"cannot split the command string: {exc}") from None
        r = _Reader(path, f"components.{cid}", table)
    values = {k.name: _read(r, k, path.parent) for k in schema.COMPONENT
              if k.name not in ("plugin", "name")}
    if "instances" not in table:
        values["instances"] = None
    if any("\0" in arg for arg in values["health_cmd"]) or (
            "health_cmd" in table and not values["health_cmd"]):
        raise r.error("health_cmd", "expected a non-empty command without NUL bytes")
    if values["backoff_max"] < values["backoff_initial"]:
        raise r.error("backoff_max", f"expected a number >= backoff_initial "
                                     f"({values['backoff_initial']}), got "
                                     f"{values['backoff_max']}")
    try:
        values["env_file_env"] = MappingProxyType(read_env_files(
            values["env_file"], listed=isinstance(table.get("env_file"), list)))
    except EnvFileError as exc:
        where = "env_file" if exc.index is None else f"env_file[{exc.index}]"
        raise r.error(where, exc.message) from None
    cfg = ComponentConfig(id=cid, plugin=plugin, name=r.string("name", cid), **values)
    extra = {k: v for k, v in table.items() if k not in _COMMON_KEYS}
    options: Mapping[str, Any] = extra
    if validate is not None:
        try:
            options = validate(cid, plugin, extra)
        except OptionError as exc:
            raise r.error(exc.key, _option_message(exc, plugin)) from None
    return ComponentConfig(**{**cfg.__dict__, "options": MappingProxyType(dict(options))})


def _option_message(exc: OptionError, plugin: str) -> str:
    """A plugin's error; an unknown key is told against the common keys as well."""
    if not isinstance(exc, UnknownOptionError):
        return exc.message
    suffix = did_you_mean(exc.key, _COMMON_KEYS | exc.known)
    own = ", ".join(sorted(exc.known)) or "none"
    return (f"unknown key{suffix} (the {plugin} plugin's keys: {own}; the common keys: "
            f"{', '.join(k.name for k in schema.COMPONENT)})")


def parse(text: str, path: Path, *, plugins: set[str] | None = None,
          validate: Validator | None = None) -> Config:
    """Parse config text. `plugins` are the names installed (None: not checked)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        if message.endswith("(at end of document)"):
            lines = text.split("\n")
            where = f"(at line {len(lines)}, column {len(lines[-1]) + 1}: end of document)"
            message = message.replace("(at end of document)", where)
        raise ConfigError(str(path), None, f"invalid TOML: {message}") from None
    for key in data:
        if key not in _TABLES:
            suffix = did_you_mean(key, _TABLES)
            raise ConfigError(str(path), key, f"unknown table or key{suffix}")
    server_table = data.get("server", {})
    if not isinstance(server_table, dict):
        raise ConfigError(str(path), "server", "expected a table [server]")
    server = _parse_server(path, server_table)
    comp_tables = data.get("components", {})
    if not isinstance(comp_tables, dict):
        raise ConfigError(str(path), "components", "expected tables [components.<id>]")
    components = {cid: _parse_component(path, cid, t, plugins, validate)
                  for cid, t in comp_tables.items()}
    _check_dependencies(path, components)
    auth = _parse_auth(path, data.get("auth", {}))
    events = _parse_events(path, data.get("events", {}))
    notify = _parse_notify(path, data.get("notify", {}), set(components))
    from core.remotes import parse_remotes

    return Config(path=path, server=server, components=MappingProxyType(components),
                  auth=auth, events=events, notify=notify,
                  remotes=parse_remotes(path, data.get("remotes", {})))


#: The top-level tables of config.toml.
_TABLES = ("server", "components", "auth", "events", "notify", "remotes")


def _parse_events(path: Path, table: Any) -> EventsConfig:
    if not isinstance(table, dict):
        raise ConfigError(str(path), "events", "expected a table [events]")
    r = _Reader(path, "events", table)
    r.check_keys({"keep_days", "max_rows"})
    d = EventsConfig()
    return EventsConfig(keep_days=r.number("keep_days", d.keep_days, 0.001, 36500),
                        max_rows=r.integer("max_rows", d.max_rows, 10, 100_000_000))


_NOTIFY_KEYS = {
    "webhook": {"url", "headers"},
    "command": {"command"},
    "email": {"host", "port", "starttls", "user", "password_file", "from", "to"},
}
_NOTIFY_COMMON = {"kind", "events", "components", "min_interval", "timeout", "retries"}


def _parse_notify(path: Path, tables: Any, components: set[str]) -> tuple[NotifyConfig, ...]:
    if not isinstance(tables, dict):
        raise ConfigError(str(path), "notify", "expected tables [notify.<name>]")
    found = []
    for name, table in tables.items():
        where = f"notify.{name}"
        if not isinstance(table, dict):
            raise ConfigError(str(path), where, f"expected a table [{where}]")
        r = _Reader(path, where, table)
        kind = r.string("kind", None)
        if kind not in NOTIFIER_KINDS:
            raise r.error("kind", f"expected one of {', '.join(map(repr, NOTIFIER_KINDS))}, "
                                  f"got {kind!r}")
        r.check_keys(_NOTIFY_COMMON | _NOTIFY_KEYS[kind])
        events = r.strings("events", ())
        if not events:
            raise r.error("events", f"is required: the events to tell of, among "
                                    f"{', '.join(EVENT_KINDS)}")
        for i, event in enumerate(events):
            if event not in EVENT_KINDS:
                raise r.error(f"events[{i}]", f"unknown event {event!r}"
                                              f"{did_you_mean(event, EVENT_KINDS)}")
        chosen = r.strings("components", ()) if "components" in table else None
        for i, cid in enumerate(chosen or ()):
            if cid not in components:
                raise r.error(f"components[{i}]", f"no component {cid!r}"
                                                  f"{did_you_mean(cid, components)}")
        values: dict[str, Any] = {
            "name": name, "kind": kind, "events": events, "components": chosen,
            "min_interval": r.number("min_interval", 60.0, 0, 86400),
            "timeout": r.number("timeout", 10.0, 0.1, 600),
            "retries": r.integer("retries", 3, 0, 100)}
        if kind == "webhook":
            url = r.string("url", None)
            if url is None or not url.startswith(("http://", "https://")):
                raise r.error("url", "expected an http:// or https:// URL")
            headers = r.get("headers", {}, dict, "a table of strings")
            for key, value in headers.items():
                if not isinstance(value, str):
                    raise r.error(f"headers.{key}", "expected a string")
            values.update(url=url, headers=MappingProxyType(dict(headers)))
        elif kind == "command":
            command = r.strings("command", ())
            if not command:
                raise r.error("command", "is required: the program and its arguments")
            values["command"] = command
        else:
            host = r.string("host", None)
            to = r.strings("to", ())
            if host is None or not to:
                raise r.error("host" if host is None else "to",
                              "is required for an email notifier (host and to)")
            password = r.path_value("password_file", None, path.parent)
            if password is not None and not password.is_file():
                raise r.error("password_file", f"expected a readable file, {password} "
                                               "does not exist")
            values.update(host=host, port=r.integer("port", 25, 1, 65535), to=to,
                          starttls=r.boolean("starttls", False), user=r.string("user", None),
                          password_file=password,
                          sender=r.string("from", "control-center@localhost"))
        found.append(NotifyConfig(**values))
    return tuple(found)

#: HS256 wants a key of at least 256 bits (RFC 7518 3.2).
MIN_JWT_SECRET = 32


def _parse_auth(path: Path, table: Any) -> AuthConfig:
    if not isinstance(table, dict):
        raise ConfigError(str(path), "auth", "expected a table [auth]")
    r = _Reader(path, "auth", table)
    r.check_keys(set(schema.AUTH_KEYS))
    values = {k.name: _read(r, k, path.parent) for k in schema.AUTH}
    secret, public = values["jwt_secret"], values["jwt_public_key"]
    if secret is not None and public is not None:
        raise r.error("jwt_public_key", "jwt_secret and jwt_public_key exclude each other; "
                                        "set one")
    if secret is not None and len(secret.encode()) < MIN_JWT_SECRET:
        raise r.error("jwt_secret", f"expected at least {MIN_JWT_SECRET} characters (HS256 "
                                    f"wants 256 bits), got {len(secret.encode())}")
    if public is not None:
        try:
            algorithm_for(load_public_key(public))
        except OSError as exc:
            raise r.error("jwt_public_key", f"cannot read {public}: "
                                            f"{exc.strerror or exc}") from None
        except ValueError as exc:
            raise r.error("jwt_public_key", str(exc)) from None
    return AuthConfig(**values)


def _check_dependencies(path: Path, components: Mapping[str, ComponentConfig]) -> None:
    for cid, comp in components.items():
        for i, dep in enumerate(comp.depends_on):
            if dep == cid:
                raise ConfigError(str(path), f"components.{cid}.depends_on[{i}]",
                                  "a component cannot depend on itself")
            if dep not in components:
                suffix = did_you_mean(dep, components)
                raise ConfigError(str(path), f"components.{cid}.depends_on[{i}]",
                                  f"unknown component {dep!r}{suffix}")
    # Cycle check: depth-first with colours; report the cycle as a path.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(cid: str) -> None:
        state[cid] = 1
        stack.append(cid)
        for dep in components[cid].depends_on:
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep):], dep]
                raise ConfigError(str(path), f"components.{cid}.depends_on",
                                  f"dependency cycle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep)
        stack.pop()
        state[cid] = 2

    for cid in components:
        if cid not in state:
            visit(cid)


def load(path: str | Path, *, plugins: set[str] | None = None,
         validate: Validator | None = None) -> Config:
    """Read and parse a config file; every failure is a ConfigError."""
    p = Path(path).absolute()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(p), None, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(p), None, f"cannot read: {exc}") from None
    return parse(text, p, plugins=plugins, validate=validate)
