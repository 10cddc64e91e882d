"""`[remotes.NAME]` tables and this Control Center's instance id.

A remote is another Control Center whose `/ws` this one follows (see
core/federation.py). Its token is kept out of every repr, log line and
error message: only the request that needs it carries it.
"""

from __future__ import annotations

import os
import ssl
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from core.errors import ConfigError, closest

_KEYS = ("url", "token", "token_file", "cacert")

#: Where the instance id is kept, under [server] data_dir.
INSTANCE_ID_FILE = Path(".control-center") / "instance-id"


@dataclass(frozen=True)
class RemoteConfig:
    """One remote Control Center: where it is and how to prove who we are."""

    name: str
    #: http(s)://host:port of the remote, without a trailing slash.
    url: str
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    cacert: Path | None = None

    @property
    def ws_url(self) -> str:
        """The remote's `/ws` (ws:// for http://, wss:// for https://)."""
        scheme, rest = self.url.split("://", 1)
        return ("wss" if scheme == "https" else "ws") + "://" + rest + "/ws"

    @property
    def tls(self) -> bool:
        return self.url.startswith("https://")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context: the system CAs, or only `cacert` when given."""
        if not self.tls:
            return None
        return ssl.create_default_context(cafile=str(self.cacert) if self.cacert else None)

    def headers(self) -> dict[str, str]:
        """The request headers proving who we are to the remote (empty without a token)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def _describe(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _string(path: Path, key: str, table: Mapping[str, Any], name: str) -> str | None:
    if name not in table:
        return None
    value = table[name]
    if not isinstance(value, str):
        raise ConfigError(str(path), f"{key}.{name}",
                          f"expected a string, got {_describe(value)}")
    if not value.strip():
        raise ConfigError(str(path), f"{key}.{name}", "expected a non-empty string")
    return value


def _url(path: Path, key: str, raw: str | None) -> str:
    if raw is None:
        raise ConfigError(str(path), f"{key}.url", "is required: the remote Control Center's "
                                                   "address, e.g. \"http://10.0.0.2:9000\"")
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(str(path), f"{key}.url",
                          f"expected an http:// or https:// address, got {raw!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ConfigError(str(path), f"{key}.url", "expected scheme://host:port alone "
                          f"(no path, query or credentials), got {raw!r}")
    try:
        parts.port  # noqa: B018  (raises ValueError for a port out of range)
    except ValueError:
        raise ConfigError(str(path), f"{key}.url", f"invalid port in {raw!r}") from None
    return f"{parts.scheme}://{parts.netloc}"


def _token_from_file(path: Path, key: str, file: Path) -> str:
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"{key}.token_file",
                          f"cannot read {file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), f"{key}.token_file", f"{file} is not UTF-8 text") from None
    lines = text.splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        raise ConfigError(str(path), f"{key}.token_file",
                          f"{file} is empty: expected the token on its first line")
    return token


def parse_remote(path: Path, name: str, table: Any) -> RemoteConfig:
    """One `[remotes.NAME]` table; ConfigError naming `remotes.NAME.<key>`."""
    key = f"remotes.{name}"
    if not isinstance(table, dict):
        raise ConfigError(str(path), key, f"expected a table [{key}], got {_describe(table)}")
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(str(path), key, "a remote's name may hold only letters, digits, "
                                          "'-' and '_' (it prefixes its components' ids)")
    for k in table:
        if k not in _KEYS:
            hint = closest(k, _KEYS)
            suffix = f"; did you mean {hint!r}?" if hint else ""
            raise ConfigError(str(path), f"{key}.{k}", f"unknown key{suffix}")
    url = _url(path, key, _string(path, key, table, "url"))
    token = _string(path, key, table, "token")
    token_file_raw = _string(path, key, table, "token_file")
    token_file = None
    if token_file_raw is not None:
        if token is not None:
            raise ConfigError(str(path), f"{key}.token_file", "token and token_file are two "
                              "ways of giving one token: set one of them")
        token_file = path.parent / Path(token_file_raw).expanduser()
        token = _token_from_file(path, key, token_file)
    cacert_raw = _string(path, key, table, "cacert")
    cacert = None
    if cacert_raw is not None:
        cacert = path.parent / Path(cacert_raw).expanduser()
        if not url.startswith("https://"):
            raise ConfigError(str(path), f"{key}.cacert",
                              "is for https:// remotes only; the url is http://")
        if not cacert.is_file():
            raise ConfigError(str(path), f"{key}.cacert",
                              f"expected a readable PEM file, {cacert} does not exist")
        try:
            ssl.create_default_context(cafile=str(cacert))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(str(path), f"{key}.cacert",
                              f"{cacert} is not a PEM certificate file: {exc}") from None
    return RemoteConfig(name=name, url=url, token=token, token_file=token_file, cacert=cacert)


def parse_remotes(path: Path, tables: Any) -> Mapping[str, RemoteConfig]:
    """The `[remotes]` tables of config.toml, in file order."""
    if not isinstance(tables, dict):
        raise ConfigError(str(path), "remotes", "expected tables [remotes.<name>]")
    return MappingProxyType({name: parse_remote(path, name, t) for name, t in tables.items()})


def instance_id(data_dir: Path) -> str:
    """This Control Center's id, made once and kept under `data_dir`.

    It tells a follower that a remote is itself, or follows it back (a loop).
    """
    file = data_dir / INSTANCE_ID_FILE
    try:
        found = file.read_text(encoding="ascii").strip()
        return str(uuid.UUID(found))
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    new = str(uuid.uuid4())
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(new + "\n", encoding="ascii")
    os.replace(tmp, file)
    return new
