"""config.toml -> frozen dataclasses, or one ConfigError naming file and key.

Relative paths in the file are resolved against the file's directory, so
the supervisor behaves the same whatever directory it is started from.
"""

from __future__ import annotations

import os
import shlex
import signal
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from core import schema
from core.config_reader import _read, _read_token_file, _Reader
from core.config_tables import _parse_auth, _parse_events, _parse_notify
from core.envfile import EnvFileError, read_env_files
from core.errors import ConfigError, OptionError, did_you_mean
from core.events import EventsConfig
from core.identity import AuthConfig
from core.notify import NotifyConfig
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
