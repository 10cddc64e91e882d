"""config.toml -> frozen dataclasses, or one ConfigError naming file and key.

Relative paths in the file are resolved against the file's directory, so
the supervisor behaves the same whatever directory it is started from.
"""

from __future__ import annotations

import math
import signal
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from core.errors import ConfigError, OptionError, closest

RESTART_POLICIES = ("always", "on-failure", "never")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 9000
    interval: float = 2.0
    token: str | None = None
    #: Where the token came from when read from [server] token_file.
    token_file: Path | None = None
    #: Origins allowed besides the page's own; "*" allows any.
    allowed_origins: tuple[str, ...] = ()
    #: Host names this server answers to besides IP addresses and localhost
    #: (DNS rebinding: a page whose name resolves to us gets 403).
    allowed_hosts: tuple[str, ...] = ()
    max_clients: int = 1000
    #: Open connections of every kind (0: as many as the descriptor limit
    #: allows, less a reserve for supervision); past it, closed unread.
    max_connections: int = 0
    #: Open connections from one client address (0: max_connections).
    max_connections_per_address: int = 0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Where components keep their data (each gets data_dir/<id>) and where
    #: the supervisor records what it spawned.
    data_dir: Path = Path("data")
    log_dir: Path = Path("logs")
    #: Lines of each component's output kept in memory for the logs endpoint.
    log_lines: int = 1000
    log_max_bytes: int = 5 * 1024 * 1024
    log_backups: int = 3
    #: Seconds of snapshot history kept for charts.
    history_seconds: float = 3600.0
    #: Largest client WebSocket message, in bytes (bigger -> close 1009).
    max_message_bytes: int = 64 * 1024
    #: Control requests (REST POSTs) per second per client before 429.
    control_rate: float = 20.0
    #: WebSocket frames per second per client before close 1008.
    message_rate: float = 50.0
    #: Failed token attempts per second per client address (bursts of ten
    #: times that) before every request needing the token gets 429.
    auth_failure_rate: float = 2.0


@dataclass(frozen=True)
class ComponentConfig:
    id: str
    plugin: str
    name: str
    autostart: bool = True
    restart: str = "on-failure"
    depends_on: tuple[str, ...] = ()
    stop_signal: int = signal.SIGTERM.value
    stop_timeout: float = 10.0
    start_timeout: float = 30.0
    probe_timeout: float = 1.0
    #: First restart delay; each quick failure multiplies it by backoff_factor
    #: up to backoff_max.
    backoff_initial: float = 0.5
    backoff_factor: float = 2.0
    backoff_max: float = 30.0
    #: A run longer than this is healthy: backoff and failure count reset.
    stable_after: float = 10.0
    #: Quick failures in a row before giving up (state "error").
    max_failures: int = 8
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def same_launch(self, other: ComponentConfig) -> bool:
        """True when nothing but presentation (name) differs: no restart needed."""
        from dataclasses import replace

        return replace(self, name=other.name) == other


@dataclass(frozen=True)
class Config:
    path: Path
    server: ServerConfig
    #: In file order, which is also the start order among independent ones.
    components: Mapping[str, ComponentConfig]
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
_SERVER_KEYS = {f for f in ServerConfig.__dataclass_fields__} | {"compression"}
_COMMON_KEYS = {f for f in ComponentConfig.__dataclass_fields__} - {"id", "options"}

#: validate(component_id, plugin, options) -> normalised options; raises OptionError.
Validator = Callable[[str, str, Mapping[str, Any]], Mapping[str, Any]]


def _describe(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "an array", dict: "a table"}
    return f"{names.get(type(value), type(value).__name__)} ({value!r})" if not isinstance(
        value, dict | list) else names[type(value)]


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
                hint = closest(key, allowed)
                suffix = f"; did you mean {hint!r}?" if hint else ""
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
            upper = "" if hi == math.inf else f" and <= {hi}"
            raise self.error(key, f"expected a number >= {lo}{upper}, got {value}")
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
        hint = closest(name, names)
        suffix = f"; did you mean {hint!r}?" if hint else ""
        raise reader.error(key, f"unknown signal {value!r}{suffix}") from None


def _read_token(r: _Reader, path: Path) -> str:
    """The token in `path` (its first line; kept out of config.toml, ps and environments)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise r.error("token_file", f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise r.error("token_file", f"{path} is not UTF-8 text") from None
    lines = text.splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        raise r.error("token_file", f"{path} is empty: expected the token on its first line")
    return token


def _parse_server(path: Path, table: Mapping[str, Any]) -> ServerConfig:
    r = _Reader(path, "server", table)
    r.check_keys(_SERVER_KEYS)
    base = path.parent
    d = ServerConfig()
    cert = r.path_value("tls_cert", None, base)
    key = r.path_value("tls_key", None, base)
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
    token = r.string("token", None)
    token_file = r.path_value("token_file", None, base)
    if token_file is not None:
        if token is not None:
            raise r.error("token_file", "token and token_file are two ways of giving one "
                                        "token: set one of them")
        token = _read_token(r, token_file)
    return ServerConfig(
        host=r.string("host", d.host),
        port=r.integer("port", d.port, 0, 65535),
        interval=r.number("interval", d.interval, 0.05, 3600),
        token=token,
        token_file=token_file,
        allowed_origins=r.strings("allowed_origins", d.allowed_origins),
        allowed_hosts=tuple(h.lower().rstrip(".") for h in
                            r.strings("allowed_hosts", d.allowed_hosts)),
        max_clients=r.integer("max_clients", d.max_clients, 1, 1_000_000),
        max_connections=r.integer("max_connections", d.max_connections, 0, 10_000_000),
        max_connections_per_address=r.integer("max_connections_per_address",
                                              d.max_connections_per_address, 0, 10_000_000),
        tls_cert=cert,
        tls_key=key,
        data_dir=r.path_value("data_dir", d.data_dir, base) or base,
        log_dir=r.path_value("log_dir", d.log_dir, base) or base,
        log_lines=r.integer("log_lines", d.log_lines, 10, 1_000_000),
        log_max_bytes=r.integer("log_max_bytes", d.log_max_bytes, 4096, 2**40),
        log_backups=r.integer("log_backups", d.log_backups, 0, 1000),
        history_seconds=r.number("history_seconds", d.history_seconds, 0, 7 * 86400),
        max_message_bytes=r.integer("max_message_bytes", d.max_message_bytes, 64, 64 * 2**20),
        control_rate=r.number("control_rate", d.control_rate, 0.1),
        message_rate=r.number("message_rate", d.message_rate, 0.1),
        auth_failure_rate=r.number("auth_failure_rate", d.auth_failure_rate, 0.01),
    )


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
        hint = closest(plugin, plugins)
        suffix = f"; did you mean {hint!r}?" if hint else ""
        raise r.error("plugin", f"unknown plugin {plugin!r} (installed: "
                                f"{', '.join(sorted(plugins))}){suffix}")
    restart = r.string("restart", "on-failure")
    if restart not in RESTART_POLICIES:
        raise r.error("restart", f"expected one of {', '.join(map(repr, RESTART_POLICIES))}, "
                                 f"got {restart!r}")
    d = ComponentConfig(id=cid, plugin=plugin, name=cid)
    backoff_initial = r.number("backoff_initial", d.backoff_initial, 0, 3600)
    backoff_max = r.number("backoff_max", d.backoff_max, 0, 86400)
    if backoff_max < backoff_initial:
        raise r.error("backoff_max", f"expected a number >= backoff_initial "
                                     f"({backoff_initial}), got {backoff_max}")
    common = {k: v for k, v in table.items() if k in _COMMON_KEYS}
    extra = {k: v for k, v in table.items() if k not in _COMMON_KEYS}
    cfg = ComponentConfig(
        id=cid,
        plugin=plugin,
        name=r.string("name", cid),
        autostart=r.boolean("autostart", d.autostart),
        restart=restart,
        depends_on=r.strings("depends_on", ()),
        stop_signal=_parse_signal(r, "stop_signal", d.stop_signal),
        stop_timeout=r.number("stop_timeout", d.stop_timeout, 0.1, 3600),
        start_timeout=r.number("start_timeout", d.start_timeout, 0.1, 3600),
        probe_timeout=r.number("probe_timeout", d.probe_timeout, 0.05, 600),
        backoff_initial=backoff_initial,
        backoff_factor=r.number("backoff_factor", d.backoff_factor, 1.0, 100),
        backoff_max=backoff_max,
        stable_after=r.number("stable_after", d.stable_after, 0, 86400),
        max_failures=r.integer("max_failures", d.max_failures, 1, 1_000_000),
    )
    del common
    options: Mapping[str, Any] = extra
    if validate is not None:
        try:
            options = validate(cid, plugin, extra)
        except OptionError as exc:
            message = exc.message
            if message.startswith("unknown key") and "did you mean" not in message:
                hint = closest(exc.key, _COMMON_KEYS)
                if hint:
                    message += f"; did you mean {hint!r}?"
            raise r.error(exc.key, message) from None
    return ComponentConfig(**{**cfg.__dict__, "options": MappingProxyType(dict(options))})


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
        if key not in ("server", "components", "remotes"):
            hint = closest(key, ("server", "components", "remotes"))
            suffix = f"; did you mean {hint!r}?" if hint else ""
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
    from core.remotes import parse_remotes

    return Config(path=path, server=server, components=MappingProxyType(components),
                  remotes=parse_remotes(path, data.get("remotes", {})))


def _check_dependencies(path: Path, components: Mapping[str, ComponentConfig]) -> None:
    for cid, comp in components.items():
        for i, dep in enumerate(comp.depends_on):
            if dep == cid:
                raise ConfigError(str(path), f"components.{cid}.depends_on[{i}]",
                                  "a component cannot depend on itself")
            if dep not in components:
                hint = closest(dep, components)
                suffix = f"; did you mean {hint!r}?" if hint else ""
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
