"""The [auth], [events] and [notify] tables of config.toml."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

from core import schema
from core.config_reader import _read, _Reader
from core.errors import ConfigError, did_you_mean
from core.events import KINDS as EVENT_KINDS
from core.events import EventsConfig
from core.identity import AuthConfig, algorithm_for, load_public_key
from core.notify import NOTIFIER_KINDS, NotifyConfig


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
