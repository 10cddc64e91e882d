"""The docker plugin's keys of a `[components.<id>]` table, checked at config load.

Everything here is pure: no engine is asked anything at load time (the engine
may be on another machine and down while the config is read). What only the
engine can judge (does the image exist, does the network) is a start failure
of the component, with the engine's own words in its `error` field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from core import OptionError, OptionReader, UnknownOptionError

#: Label keys under this prefix are the plugin's own (see engine.LABEL_*).
RESERVED_LABEL_PREFIX = "control-center."

#: The smallest memory limit the Docker engine accepts.
MIN_MEMORY = 6 * 2**20

_PORT = re.compile(r"^(?:(?P<ip>[0-9.]+|\[[0-9a-fA-F:]+\]):)?(?P<host>\d+):(?P<container>\d+)"
                   r"(?:/(?P<proto>tcp|udp|sctp))?$")
_MOUNT_KEYS = ("type", "source", "target", "read_only")
_MOUNT_TYPES = ("bind", "volume", "tmpfs")
PULL_POLICIES = ("missing", "never")
#: `env_file` is the core's key: its values come as ComponentInfo.env_file_env.
KEYS = ("image", "command", "env", "mounts", "network", "ports", "user",
        "labels", "pull")
#: Keys whose values are not one of OptionReader's kinds; checked here.
_OWN_KEYS = ("mounts", "ports")


def _type_name(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def _port(key: str, value: object) -> tuple[str, int | tuple[str, int]]:
    if not isinstance(value, str):
        raise OptionError(key, f'expected "HOST:CONTAINER[/PROTO]", got {_type_name(value)}')
    found = _PORT.match(value)
    if found is None:
        raise OptionError(key, f'expected "[IP:]HOST:CONTAINER[/tcp|udp|sctp]" such as '
                               f'"127.0.0.1:8080:80", got {value!r}')
    host, container = int(found["host"]), int(found["container"])
    for number in (host, container):
        if not 0 < number < 65536:
            raise OptionError(key, f"expected port numbers from 1 to 65535, got {value!r}")
    spec = f"{container}/{found['proto'] or 'tcp'}"
    ip = (found["ip"] or "").strip("[]")
    return spec, ((ip, host) if ip else host)


def _mount(key: str, value: object) -> dict[str, Any]:
    """A mount as `{type, source, target, read_only}`; a bind source stays as written."""
    mount: dict[str, Any]
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) not in (2, 3) or not all(parts[:2]):
            raise OptionError(key, f'expected "SOURCE:TARGET" or "SOURCE:TARGET:ro", got '
                                   f"{value!r}")
        if len(parts) == 3 and parts[2] not in ("ro", "rw"):
            raise OptionError(key, f'expected the mode "ro" or "rw" after the target, got '
                                   f"{parts[2]!r}")
        source = parts[0]
        kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
        mount = {"type": kind, "source": source, "target": parts[1],
                 "read_only": len(parts) == 3 and parts[2] == "ro"}
    elif isinstance(value, dict):
        for name in value:
            if name not in _MOUNT_KEYS:
                raise OptionError(f"{key}.{name}", f"unknown key (valid keys: "
                                                   f"{', '.join(_MOUNT_KEYS)})")
        opts = OptionReader(value)
        try:
            kind = opts.string("type", "bind")
            if kind not in _MOUNT_TYPES:
                raise OptionError("type", f"expected one of {', '.join(_MOUNT_TYPES)}, got "
                                          f"{kind!r}")
            mount = {"type": kind, "source": opts.string("source", ""),
                     "target": opts.string("target"),
                     "read_only": opts.boolean("read_only", False)}
        except OptionError as exc:
            raise OptionError(f"{key}.{exc.key}", exc.message) from None
        if kind != "tmpfs" and not mount["source"]:
            raise OptionError(f"{key}.source", f"is required for a {kind} mount")
    else:
        raise OptionError(key, f'expected "SOURCE:TARGET[:ro]" or a table, got '
                               f"{_type_name(value)}")
    if not mount["target"].startswith("/"):
        raise OptionError(key, f"expected an absolute path inside the container as the "
                               f"target, got {mount['target']!r}")
    return mount


def read_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the docker plugin's keys; the result is what the hooks see."""
    for key in options:
        if key not in KEYS:
            # The core tells it against its common keys too (a typo of restart).
            raise UnknownOptionError(key, frozenset(KEYS))
    opts = OptionReader({k: v for k, v in options.items() if k not in _OWN_KEYS})
    image = opts.string("image")
    if not image.strip():
        raise OptionError("image", 'expected an image name such as "nginx:1.27"')
    result: dict[str, Any] = {
        "image": image,
        "command": opts.command("command", None),
        "env": opts.env_table("env", {}),
        "network": opts.string("network", "host"),
        "user": opts.string("user", None),
        "labels": opts.string_table("labels", {}),
        "pull": opts.string("pull", "missing"),
    }
    if not result["network"].strip():
        raise OptionError("network", 'expected "host", "none" or a network name')
    if result["pull"] not in PULL_POLICIES:
        raise OptionError("pull", f"expected one of {', '.join(map(repr, PULL_POLICIES))}, "
                                  f"got {result['pull']!r}")
    if result["user"] is not None and not result["user"].strip():
        raise OptionError("user", 'expected a user name or "UID[:GID]"')
    for label in result["labels"]:
        if label.startswith(RESERVED_LABEL_PREFIX):
            raise OptionError(f"labels.{label}", f"labels under {RESERVED_LABEL_PREFIX!r} "
                                                 "are set by Control Center itself")
    mounts = options.get("mounts", [])
    if not isinstance(mounts, list):
        raise OptionError("mounts", f"expected an array of mounts, got {_type_name(mounts)}")
    result["mounts"] = [_mount(f"mounts[{i}]", m) for i, m in enumerate(mounts)]
    ports = options.get("ports", [])
    if not isinstance(ports, list):
        raise OptionError("ports", f"expected an array of \"HOST:CONTAINER\" strings, got "
                                   f"{_type_name(ports)}")
    result["ports"] = dict(_port(f"ports[{i}]", p) for i, p in enumerate(ports))
    if result["ports"] and (result["network"] in ("host", "none")
                            or result["network"].startswith("container:")):
        raise OptionError("ports", f"publishing ports needs a network of its own; with "
                                   f"network = {result['network']!r} the container "
                                   "uses the host's ports directly (or none)")
    opts.finish()
    return result
