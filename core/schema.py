"""Every key of config.toml the core knows: type, default, bounds and meaning.

The validator (core.config) reads its types, defaults and bounds from here,
and `python -m core config-reference` renders the same definitions, so the
reference and the checks cannot disagree.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from typing import Any

RESTART_POLICIES = ("always", "on-failure", "never")

#: kind -> how the reference names the type.
KINDS = {
    "string": "string",
    "boolean": "boolean",
    "integer": "integer",
    "number": "number",
    "path": "path (string)",
    "strings": "array of strings",
    "paths": "path (string) or array of paths",
    "integers": "array of integers",
    "signal": 'signal (name such as "SIGTERM", or number)',
    "choice": "string",
    "size": 'size (string: a number with a K, M or G suffix, e.g. "512M"; or an integer '
            'of bytes)',
}


@dataclass(frozen=True)
class Key:
    name: str
    kind: str
    default: Any
    meaning: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    #: Shown instead of the default's value (e.g. "the table name").
    default_text: str | None = None

    def type_text(self) -> str:
        text = KINDS[self.kind]
        if self.choices:
            text += ": " + " | ".join(f'"{c}"' for c in self.choices)
        if self.low is not None or self.high is not None:
            low = _num(self.low) if self.low is not None else None
            high = _num(self.high) if self.high is not None and self.high != math.inf else None
            if low is not None and high is not None:
                text += f", {low} to {high}"
            elif low is not None:
                text += f", >= {low}"
            elif high is not None:
                text += f", <= {high}"
        return text

    def default_repr(self) -> str:
        if self.default_text is not None:
            return self.default_text
        value = self.default
        if value is None:
            return "not set"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return f'"{value}"'
        if isinstance(value, tuple | list):
            return "[" + ", ".join(f'"{v}"' if isinstance(v, str) else str(v)
                                   for v in value) + "]"
        return _num(value)


def _num(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return f"{value:.1f}"
    return f"{value:_}".replace("_", ",") if isinstance(value, int) and value >= 100_000 \
        else str(value)


SERVER: tuple[Key, ...] = (
    Key("host", "string", "127.0.0.1",
        "Address the one port listens on. Loopback by default; \"0.0.0.0\" exposes "
        "the dashboard, the REST API and the stream to the network (set a token)."),
    Key("port", "integer", 9000,
        "The port of the dashboard, the REST API, /metrics and /ws. 0 picks a free one.",
        0, 65535),
    Key("interval", "number", 2.0,
        "Seconds between two snapshots broadcast to every client; also the probe "
        "cadence.", 0.05, 3600),
    Key("token", "string", None,
        "When set, every /api/* path except /api/info, /metrics and the /ws handshake "
        "need it (Authorization: Bearer TOKEN, or ?token=TOKEN on /ws). To keep it out "
        "of this file, use token_file instead."),
    Key("token_file", "path", None,
        "A file whose content (surrounding whitespace stripped) is the token, read at "
        "start; $VARIABLES are expanded, so "
        "\"$CREDENTIALS_DIRECTORY/token\" reads a systemd credential. Not together "
        "with token."),
    Key("allowed_origins", "strings", (),
        "Origins (scheme://host:port) allowed to POST and to open /ws besides the "
        "page's own; \"*\" allows any. Requests without an Origin header always pass."),
    Key("allowed_hosts", "strings", (),
        "Host names this server answers to besides IP addresses and localhost; a "
        "request or /ws handshake with another Host gets 403 (DNS rebinding). \"*\" "
        "allows any."),
    Key("max_clients", "integer", 1000,
        "WebSocket clients at once; one more is accepted, then closed with 1013.",
        1, 1_000_000),
    Key("max_connections", "integer", 0,
        "Open connections of every kind; past it a new one is closed unread. 0: what "
        "the descriptor limit allows, less a reserve for supervision (the limit is "
        "raised to the hard limit at start).", 0, 10_000_000),
    Key("max_connections_per_address", "integer", 0,
        "Open connections from one client address; 0: max_connections.", 0, 10_000_000),
    Key("tls_cert", "path", None,
        "PEM certificate chain; with tls_key the port serves https:// and wss:// only. "
        "Relative to this file."),
    Key("tls_key", "path", None, "The private key that goes with tls_cert."),
    Key("signing_key", "path", None,
        "An Ed25519 private key (PEM; `python -m core keygen FILE` writes one). Clients "
        "that subscribe with \"signed\": true then get each snapshot as a JWS (EdDSA) "
        "whose payload is the text other clients get; the public key is at "
        "GET /api/keys."),
    Key("data_dir", "path", "data",
        "Where components keep their data (each gets data_dir/<id>) and where the "
        "supervisor records what it spawned (data_dir/.control-center/)."),
    Key("log_dir", "path", "logs",
        "Each component's output is written to log_dir/<id>.log, rotated."),
    Key("log_lines", "integer", 1000,
        "Lines of each component's output kept in memory for the logs endpoint.",
        10, 1_000_000),
    Key("log_max_bytes", "integer", 5 * 1024 * 1024,
        "A component's log file is rotated beyond this size, in bytes.", 4096, 2**40),
    Key("log_backups", "integer", 3, "Rotated log files kept per component.", 0, 1000),
    Key("history_seconds", "number", 3600.0,
        "Seconds of snapshot history kept for the charts and GET /api/history.",
        0, 7 * 86400),
    Key("max_message_bytes", "integer", 64 * 1024,
        "Largest WebSocket message a client may send, in bytes; bigger: close 1009.",
        64, 64 * 2**20),
    Key("control_rate", "number", 20.0,
        "REST control requests (POSTs) per second per client before 429.", 0.1),
    Key("message_rate", "number", 50.0,
        "WebSocket frames (messages, fragments, pings, pongs) per second per client "
        "before close 1008.", 0.1),
    Key("auth_failure_rate", "number", 2.0,
        "Failed token attempts per second per client address (bursts of ten seconds' "
        "worth) before every request that needs the token gets 429.", 0.01),
    Key("cgroups", "boolean", True,
        "Run each component in its own cgroup v2 where the supervisor can create "
        "them (root, or a delegated subtree): a stop then ends everything the component "
        "started, however it detached, and its figures count its whole tree. false "
        "keeps process-group containment. See docs/containment.md."),
)

#: The most instances one component may have, in config.toml and at run time.
MAX_INSTANCES = 1000
#: The keys of a plugin's options in which "{instance}" is replaced by the index.
INSTANCE_KEYS = ("command", "cwd", "env")

COMPONENT: tuple[Key, ...] = (
    Key("plugin", "string", None,
        "Required. The plugin that drives this component: the name of its entry "
        "point in the control_center group (\"process\", \"storage\", \"api\" are "
        "built in).", default_text="required"),
    Key("name", "string", None, "Display name on the dashboard and in the CLI.",
        default_text="the component id"),
    Key("autostart", "boolean", True,
        "Start with the supervisor; false: only on a start request."),
    Key("restart", "choice", "on-failure",
        "When an exited process is started again: always, on-failure (non-zero exit "
        "or a signal), never. Health does not restart anything.",
        choices=RESTART_POLICIES),
    Key("depends_on", "strings", (),
        "Component ids started before this one; it starts once they are running and "
        "healthy, and stops before them."),
    Key("stop_signal", "signal", "SIGTERM",
        "Sent to the process group after the plugin's stop hook."),
    Key("stop_timeout", "number", 10.0,
        "Seconds from a stop request to SIGKILL of the whole group; the plugin's stop "
        "hook gets the first half.", 0.1, 3600),
    Key("start_timeout", "number", 30.0,
        "Seconds the start hook may take, and how long a new process may stay "
        "unhealthy before health says so.", 0.1, 3600),
    Key("probe_timeout", "number", 1.0,
        "Seconds a probe may take; past it the component is unhealthy.", 0.05, 600),
    Key("backoff_initial", "number", 0.5, "First automatic restart delay, in seconds.",
        0, 3600),
    Key("backoff_factor", "number", 2.0,
        "Each quick failure in a row multiplies the delay by this.", 1.0, 100),
    Key("backoff_max", "number", 30.0,
        "The restart delay never exceeds this; at least backoff_initial.", 0, 86400),
    Key("stable_after", "number", 10.0,
        "A run at least this long is stable: the backoff and the failure count reset.",
        0, 86400),
    Key("health_cmd", "strings", (),
        "A command run at each probe (an array, or one string split like a shell), "
        "bounded by probe_timeout: exit 0 is healthy, anything else unhealthy with its "
        "last line of output as the reason. Replaces the plugin's probe."),
    Key("exit_codes", "integers", (0,),
        "Exit statuses that are expected: with restart = \"on-failure\" such an exit "
        "is not restarted, and none counts toward the backoff or the give-up (a quick "
        "one under \"always\" waits backoff_initial).", 0, 255),
    Key("max_failures", "integer", 8,
        "Quick failures in a row before giving up (state \"error\") until a start "
        "request.", 1, 1_000_000),
    Key("env_file", "paths", (),
        "Dotenv files (KEY=VALUE lines; comments, quotes, `export` and ${VAR} as "
        "python-dotenv reads them), relative to this file, read when the config is "
        "loaded: a missing or unreadable file is an error. Their variables go into the "
        "component's environment beneath its plugin's own (the process plugin's env "
        "wins), a later file winning over an earlier one; a KEY without a value takes "
        "the supervisor's. A reload that finds a file changed restarts the component."),
    Key("watch", "strings", (),
        "Globs (\"src/**/*.py\") relative to the component's cwd (when its plugin has "
        "one) or to this file's directory: a change to a matching file restarts the "
        "running component, once per burst of changes (0.5 s without a change), with a "
        "restart event. For development; changes in the component's own data "
        "directory and log files are ignored."),
    Key("memory_max", "size", None,
        "Memory of the component's whole process tree above which it is restarted, "
        "once it stays above for 2 probes in a row (the reason goes to `error` and "
        "the log). Where cgroup v2 has the memory controller, also the kernel's "
        "memory.max: past it the kernel kills, reported as an OOM kill."),
    Key("cpu_max", "number", None,
        "CPU the component's tree may use, in cores (0.5: half of one core); the "
        "kernel's cpu.max of its cgroup where cgroup v2 has the cpu controller, "
        "otherwise not enforced (the log says so once).", 0.01, 1024),
    Key("instances", "integer", 1,
        "Processes of this component, each its own entry ID.0 ... ID.N-1 in the "
        "snapshot (with \"instance_of\": \"ID\"); \"{instance}\" in the plugin's "
        "command, cwd and env values and in health_cmd is replaced by the index, and "
        "CONTROL_CENTER_INSTANCE holds it in each child's environment. Without the key "
        "the component is one entry ID as always; with it (1 included) its entries are "
        "numbered. depends_on = [\"ID\"] waits for every instance; POST "
        "/api/components/ID/scale changes the count until the next reload.",
        0, MAX_INSTANCES, default_text="1 (one entry ID, not numbered)"),
)

AUTH: tuple[Key, ...] = (
    Key("jwt_secret", "string", None,
        "A shared secret (at least 32 characters) that signs and verifies JSON Web "
        "Tokens with HS256; `python -m core token` mints them. Not together with "
        "jwt_public_key."),
    Key("jwt_public_key", "path", None,
        "A PEM public key that verifies tokens signed elsewhere: RS256 for RSA, ES256 "
        "for EC P-256, EdDSA for Ed25519, by the key's type."),
    Key("jwt_issuer", "string", None, "When set, a token's `iss` must be this."),
    Key("jwt_audience", "string", None, "When set, a token's `aud` must be this."),
)

SERVER_KEYS = {k.name: k for k in SERVER}
AUTH_KEYS = {k.name: k for k in AUTH}
COMPONENT_KEYS = {k.name: k for k in COMPONENT}


def default(table: dict[str, Key], name: str) -> Any:
    return table[name].default


_INTRO = """\
Every key the core reads from config.toml, with its type, default and
meaning. Generated from the definitions the validator uses
(`python -m core config-reference` prints this text). Relative paths are
resolved against the directory of config.toml. An unknown key is an error
that names the file and the key path and suggests the closest valid key;
nothing starts until the file is valid (`python -m core check`)."""

_PLUGIN_KEYS = """\
Any other key of a `[components.<id>]` table belongs to its plugin, which
checks it in its `validate_config` hook. The built-in plugins' keys:

- `process`: `command` (required; an array of strings, or one string split
  like a shell; `"{python}"` is the supervisor's interpreter), `cwd`, `env`
  (table of strings), `health_url` (healthy on 2xx), `health_tcp`
  (`"host:port"`, healthy when it accepts a connection), `user` (the user
  the process runs as: another user only when the supervisor runs as root;
  its groups, `HOME`, `USER` and `LOGNAME` follow), `group` (default the
  user's primary group), `umask` (an octal string such as `"022"`).
- `storage`: `host`, `port` (default 7701), `data_dir`, `sync`
  (`"full"` or `"normal"`), `user`, `group`, `umask`.
- `api`: `host`, `port` (default 7702), `storage_url`, `window` (seconds,
  1 to 3600), `user`, `group`, `umask`.
- `docker`: its own keys, see docs/docker.md (its `user` is the
  container's user)."""


def _entry(key: Key) -> str:
    head = f"- `{key.name}`: {key.type_text()}; default {key.default_repr()}."
    body = textwrap.fill(key.meaning, width=76, initial_indent="  ", subsequent_indent="  ")
    return f"{head}\n{body}"


def reference() -> str:
    """The configuration reference as Markdown: the text of docs/config.md."""
    parts = ["# Configuration reference", "", _INTRO, "",
             "## `[server]`", "",
             "One table for the supervisor itself. Every key is optional. These keys\n"
             "take effect when the supervisor starts; a reload (SIGHUP) applies\n"
             "component changes only.", ""]
    parts += [_entry(k) for k in SERVER]
    parts += ["", "## `[components.<id>]`", "",
              "One table per component; the table name is the component id (letters, "
              "digits,\n`-` and `_`), used in REST paths and in `depends_on`. The keys "
              "the core reads:", ""]
    parts += [_entry(k) for k in COMPONENT]
    parts += ["", "## `[auth]`", "",
              "JSON Web Tokens with roles. A token carries `sub`, `exp` and `role`:\n"
              "`viewer` (the page, GET endpoints, /ws), `operator` (also start, stop,\n"
              "restart, scale) or `admin` (also reload). `[server] token` keeps working and\n"
              "means admin. Without `[auth]` and `[server] token` nothing is asked.", ""]
    parts += [_entry(k) for k in AUTH]
    parts += ["", "## Plugin keys", "", _PLUGIN_KEYS, ""]
    return "\n".join(parts)
