"""Client commands of `python -m core`: status, watch, start, stop, restart, scale, logs,
reload.

Each talks to a running server through core.client; exit status 0 on
success, 1 with a one-line reason on stderr otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import ssl
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from core.client import Client

#: core.client's DEFAULT_URL (a test keeps them equal): core.client and httpx
#: are imported when a client command runs, not by every `python -m core`
#: (httpx brings click and rich when they are installed: 10 MB of the
#: supervisor's memory).
DEFAULT_URL = "http://127.0.0.1:9000"

TOKEN_ENV = "CONTROL_CENTER_TOKEN"
#: How often `logs -f` asks for new lines.
FOLLOW_POLL = 0.5


def _fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def render_table(components: dict[str, dict[str, Any]], metrics: dict[str, Any]) -> str:
    """The status table: one line per component, then the system line."""
    header = ("ID", "NAME", "STATE", "HEALTH", "PID", "UPTIME", "CPU", "MEM", "RESTARTS",
              "ERROR")
    rows = [header]
    for cid, c in components.items():
        rows.append((cid, c.get("name", ""), c.get("state", ""), c.get("health") or "-",
                     _fmt(c.get("pid")),
                     _uptime(c.get("uptime")), _fmt(c.get("cpu_percent"), "%"),
                     _fmt(c.get("memory_mb"), "MB"), _fmt(c.get("restarts")),
                     c.get("error") or ""))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r[:-1], widths, strict=True))
             + "  " + str(r[-1]) for r in rows]
    if metrics:
        lines.append("")
        lines.append(f"{metrics.get('timestamp', '')}  cpu {_fmt(metrics.get('cpu_percent'), '%')}"
                     f"  memory {_fmt(metrics.get('memory_percent'), '%')}"
                     f"  concepts {_fmt(metrics.get('total_concepts'))}"
                     f"  qps {_fmt(metrics.get('queries_per_second'))}")
    return "\n".join(line.rstrip() for line in lines)


def _client(args: argparse.Namespace) -> Client:
    from core.client import Client

    context = None
    if getattr(args, "cacert", None):
        context = ssl.create_default_context(cafile=args.cacert)
    token = args.token
    if getattr(args, "token_file", None):
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SystemExit(f"error: --token-file: cannot read {args.token_file}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
    return Client(args.url, token, ssl_context=context)


def _runner(body: Callable[[Client, argparse.Namespace], Awaitable[int]]
            ) -> Callable[[argparse.Namespace], int]:
    """Wrap an async command: run it on trio, turn failures into one line + status 1."""

    def run(args: argparse.Namespace) -> int:
        import httpx

        from core.client import ApiError, StreamClosed

        async def main() -> int:
            async with _client(args) as client:
                return await body(client, args)

        try:
            return trio.run(main)
        except KeyboardInterrupt:
            return 0
        except ApiError as exc:
            print(f"error: {exc.message} (HTTP {exc.status})", file=sys.stderr)
        except StreamClosed as exc:
            print(f"error: {exc}", file=sys.stderr)
        except httpx.HTTPError as exc:
            print(f"error: cannot reach {args.url}: {exc or type(exc).__name__}",
                  file=sys.stderr)
        except (OSError, ssl.SSLError) as exc:
            print(f"error: {exc}", file=sys.stderr)
        return 1

    return run


async def _status(client: Client, args: argparse.Namespace) -> int:
    doc = await client.status()
    print(render_table(doc.get("components", {}), doc.get("metrics", {})))
    return 0


async def _watch(client: Client, args: argparse.Namespace) -> int:
    tty = sys.stdout.isatty()
    seen = 0
    async with client.snapshots() as stream:
        async for doc in stream:
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J")
            print(render_table(doc.get("components", {}), doc.get("metrics", {})), flush=True)
            if not tty:
                print(flush=True)
            seen += 1
            if args.count and seen >= args.count:
                break
    return 0


def _describe(view: dict[str, Any]) -> str:
    if "instances" in view:  # a component with instances: one line for each
        return "\n".join([f"{view.get('id')}: {view.get('state')} ({view['running']} of "
                          f"{view['instances']} instances running)",
                          *(_describe({"id": iid, **inst})
                            for iid, inst in view.get("components", {}).items())])
    pid = f" (pid {view['pid']})" if view.get("pid") else ""
    error = f": {view['error']}" if view.get("error") else ""
    return f"{view.get('id')}: {view.get('state')}{pid}{error}"


def _control(action: str) -> Callable[[Client, argparse.Namespace], Awaitable[int]]:
    async def body(client: Client, args: argparse.Namespace) -> int:
        if action == "stop":
            view = await client.stop(args.id, wait=not args.no_wait)
        else:
            view = await getattr(client, action)(args.id)
        print(_describe(view))
        return 0 if view.get("state") != "error" else 1

    return body


#: C0 controls but tab, DEL, C1 controls: what a child's output may use to
#: drive the operator's terminal (OSC 52 clipboard, window titles, a \r that
#: overwrites a line with a fake supervisor message).
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    """`text` with every terminal control character shown as an escape (\\x1b)."""
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _print_lines(lines: list[dict[str, Any]], raw: bool) -> None:
    for ln in lines:
        stream = "" if ln["stream"] == "stdout" else f"[{ln['stream']}] "
        text = ln["text"] if raw else escape_controls(ln["text"])
        print(f"{ln['time']} {stream}{text}", flush=True)


async def _logs(client: Client, args: argparse.Namespace) -> int:
    # On a terminal a child's control sequences are shown, not obeyed.
    raw = args.raw or not sys.stdout.isatty()
    answer = await client.logs(args.id, lines=args.lines)
    _print_lines(answer["lines"], raw)
    last = answer["last_seq"]
    while args.follow:
        await trio.sleep(FOLLOW_POLL)
        answer = await client.logs(args.id, after=last, lines=5000)
        _print_lines(answer["lines"], raw)
        last = answer["last_seq"]
    return 0


async def _scale(client: Client, args: argparse.Namespace) -> int:
    view = await client.scale(args.id, args.instances)
    print(_describe(view))
    return 0


async def _reload(client: Client, args: argparse.Namespace) -> int:
    result = await client.reload()
    parts = [f"{key}: {', '.join(result[key]) or '-'}"
             for key in ("added", "removed", "changed", "unchanged")]
    print("reloaded; " + "; ".join(parts))
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the client commands to `python -m core`'s sub-commands."""

    def command(name: str, help_text: str, body: Callable[..., Awaitable[int]]
                ) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, help=help_text)
        p.add_argument("--url", default=DEFAULT_URL,
                       help=f"the server (default {DEFAULT_URL})")
        p.add_argument("--token", default=os.environ.get(TOKEN_ENV),
                       help=f"API token (default: ${TOKEN_ENV}); visible in ps: prefer "
                            "--token-file")
        p.add_argument("--token-file", default=None,
                       help="read the API token from this file")
        p.add_argument("--cacert", default=None,
                       help="CA certificate to trust for https:// (self-signed servers)")
        p.set_defaults(func=_runner(body))
        return p

    command("status", "show every component of a running server", _status)
    watch = command("watch", "follow the live snapshots in the terminal", _watch)
    watch.add_argument("--count", type=int, default=0,
                       help="stop after this many snapshots (default: until Ctrl-C)")
    for action in ("start", "stop", "restart"):
        p = command(action, f"{action} one component", _control(action))
        p.add_argument("id", help="component id")
        if action == "stop":
            p.add_argument("--no-wait", action="store_true",
                           help="answer once it is stopping (default: once it is stopped)")
    scale = command("scale", "run N instances of one component (until the next reload)",
                    _scale)
    scale.add_argument("id", help="component id (not one instance's ID.K)")
    scale.add_argument("instances", type=int, help="how many, 0 to 1000")
    logs = command("logs", "print a component's recent output", _logs)
    logs.add_argument("id", help="component id")
    logs.add_argument("-n", "--lines", type=int, default=50,
                      help="how many recent lines (default 50)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("--raw", action="store_true",
                      help="print control characters as they are (on a terminal they are "
                           "escaped by default)")
    command("reload", "re-read the server's config.toml", _reload)
