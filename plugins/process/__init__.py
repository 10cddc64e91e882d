"""The generic component: supervise any program.

    [components.worker]
    plugin = "process"
    command = ["{python}", "worker.py"]   # or one string, split like a shell;
                                          # "{python}" is the supervisor's own
                                          # interpreter (sys.executable)
    cwd = "."                             # relative to config.toml's directory
    env = { LOG_LEVEL = "info" }          # merged over the supervisor's env
    health_url = "http://127.0.0.1:8080/health"   # optional: 2xx = healthy
    health_tcp = "127.0.0.1:8080"                 # optional: connect = healthy
    user = "www-data"                     # run as this user (the supervisor runs as root)
    group = "www-data"                    # default: the user's primary group
    umask = "022"                         # octal; default: the supervisor's
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core import ComponentInfo, Launch, OptionError, OptionReader, Probe, hookimpl

_UMASK = re.compile(r"^0?[0-7]{1,3}$|^0o[0-7]{1,3}$")


def _host_port(key: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise OptionError(key, f'expected "host:port", got {value!r}')
    return host, int(port)


def read_run_as(opts: OptionReader, options: Mapping[str, Any]) -> dict[str, Any]:
    """The `user`, `group` and `umask` keys of `options`, checked against this
    machine's users and groups and against who the supervisor runs as.

    Only the keys that are set are returned. The storage and api plugins
    read them too; `launch_run_as` turns the result into Launch's keywords.
    """
    raw_umask = options.get("umask")
    if isinstance(raw_umask, int) and not isinstance(raw_umask, bool):
        raise OptionError("umask", f'expected an octal string such as "022", got an integer '
                                   f"({raw_umask}): write it in quotes")
    user = opts.string("user", None)
    group = opts.string("group", None)
    umask = opts.string("umask", None)
    if user is not None:
        _check_user(user)
    if group is not None:
        _check_group(group)
    if umask is not None:
        if not _UMASK.match(umask):
            raise OptionError("umask", f'expected an octal mask such as "022" or "077", got '
                                       f"{umask!r}")
        umask = int(umask.removeprefix("0o"), 8)
    found = {"user": user, "group": group, "umask": umask}
    return {k: v for k, v in found.items() if v is not None}


def _whoami() -> str:
    uid = os.geteuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _check_user(user: str) -> None:
    if not user.strip():
        raise OptionError("user", "expected a user name, got an empty string")
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        raise OptionError("user", f"unknown user {user!r} (not in the password "
                                  "database)") from None
    if os.geteuid() != 0 and uid != os.geteuid():
        raise OptionError("user", f"the supervisor runs as {_whoami()}, not root: it can run "
                                  f"children only as itself, not as {user!r}")


def _check_group(group: str) -> None:
    if not group.strip():
        raise OptionError("group", "expected a group name, got an empty string")
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise OptionError("group", f"unknown group {group!r} (not in the group "
                                   "database)") from None
    if os.geteuid() != 0 and gid not in (os.getgid(), os.getegid()):
        raise OptionError("group", f"the supervisor runs as {_whoami()}, not root: it can run "
                                   f"children only in its own group, not {group!r}")


def launch_run_as(options: Mapping[str, Any]) -> dict[str, Any]:
    """Launch's user=, group= and umask= from options read by `read_run_as`."""
    return {k: options.get(k) for k in ("user", "group", "umask")}


def read_options(options: Mapping[str, Any], *, command_required: bool = True) -> dict[str, Any]:
    """Validate the process plugin's keys; other plugins reuse it for their own."""
    opts = OptionReader(options)
    command = opts.command("command") if command_required else opts.command("command", None)
    result = {
        "command": command,
        "cwd": opts.string("cwd", None),
        "env": opts.env_table("env", {}),
        "health_url": opts.string("health_url", None),
        "health_tcp": opts.string("health_tcp", None),
        **read_run_as(opts, options),
    }
    if result["health_url"] is not None and not result["health_url"].startswith(
            ("http://", "https://")):
        raise OptionError("health_url", f"expected an http:// or https:// URL, got "
                                        f"{result['health_url']!r}")
    if result["health_tcp"] is not None:
        _host_port("health_tcp", result["health_tcp"])
    opts.finish()
    return result


@hookimpl
def validate_config(component_id: str, options: Mapping[str, Any]) -> Mapping[str, Any]:
    return read_options(options)


@hookimpl
def start(component: ComponentInfo) -> Launch:
    opts = component.options
    cwd = opts.get("cwd")
    if cwd is not None:
        cwd = str((component.config_dir / Path(cwd)).resolve())
        if not Path(cwd).is_dir():
            raise FileNotFoundError(f"cwd {cwd} is not a directory")
    argv = tuple(sys.executable if a == "{python}" else a for a in opts["command"])
    # The core runs the check itself, on its event loop (no thread per probe).
    # Without one there is nothing to probe but the process itself, which the
    # core watches anyway: no probe at all.
    health = opts.get("health_url") or (
        f"tcp://{opts['health_tcp']}" if opts.get("health_tcp") else None)
    return Launch(argv=argv, cwd=cwd, env=opts.get("env") or {}, probe=health is not None,
                  health=health, **launch_run_as(opts))


def check_url(url: str, timeout: float) -> Probe:
    import urllib.error
    import urllib.request  # only for a component with an HTTP health check

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            if 200 <= resp.status < 300:
                return Probe(healthy=True)
            return Probe(healthy=False, error=f"health check {url} answered {resp.status}")
    except urllib.error.HTTPError as exc:
        return Probe(healthy=False, error=f"health check {url} answered {exc.code}")
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Probe(healthy=False, error=f"health check {url} failed: {reason}")


@hookimpl
def probe(component: ComponentInfo, pid: int) -> Probe | None:
    """The same checks in a blocking form (the core runs Launch.health itself)."""
    opts = component.options
    if opts.get("health_url"):
        return check_url(opts["health_url"], timeout=2.0)
    if opts.get("health_tcp"):
        host, port = _host_port("health_tcp", opts["health_tcp"])
        try:
            with socket.create_connection((host, port), timeout=2.0):
                return Probe(healthy=True)
        except OSError as exc:
            return Probe(healthy=False, error=f"cannot connect to {host}:{port}: {exc}")
    return None
