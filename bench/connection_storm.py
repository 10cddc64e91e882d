"""A WebSocket connection storm against `max_clients`: who is served, who is refused, and how fast.

    python bench/connection_storm.py [--attempts 3000] [--max-clients 1000]
                                     [--interval 0.5] [--observe 10] [--json out.json]
    python bench/connection_storm.py --staged [...]

Starts `python -m core` on 127.0.0.1 (free port) with `max_clients`, then
opens `--attempts` WebSocket connections at once. Expected: exactly
`max_clients` are served (they get the snapshot and one per tick), the rest
are closed with 1013 right after the handshake, and the served ones keep
their cadence while the storm hits (inter-arrival within 10-20 % of the
interval). `--staged` serves `max_clients` first, then sends the rest
of the attempts from a separate process, and compares the served clients'
cadence before, during and after that storm. Reports the counts, the time
until every attempt had its answer, the served clients' inter-arrival
spread, and the server's CPU and RSS.

Bounded: one storm, `--observe` seconds of watching, 127.0.0.1 only; ends
only the supervisor it started (by pid).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak import _spread, start_server, write_config


def raise_nofile(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def attempt(url: str, result: dict[str, Any], served: list[list[float]],
                  t0: float, until: float) -> None:
    try:
        # Bounded: the storm, the watching, then 10 s for the close handshakes.
        with trio.fail_after(until - trio.current_time() + 10):
            async with open_websocket_url(url) as ws:
                await ws.get_message()
                result["answered_at"].append(trio.current_time() - t0)
                result["served"] += 1
                arrivals: list[float] = []
                served.append(arrivals)
                with trio.move_on_at(until):
                    while True:
                        await ws.get_message()
                        arrivals.append(trio.current_time())
                # Close from our side, bounded: 1000 close handshakes at once.
                with trio.move_on_after(5):
                    await ws.aclose()
    except ConnectionClosed as exc:
        code = exc.reason.code if exc.reason else -1
        result["answered_at"].append(trio.current_time() - t0)
        result["closed"][code] = result["closed"].get(code, 0) + 1
        stream = getattr(ws, "_stream", None)  # trio-websocket leaves it open
        if stream is not None:
            await stream.aclose()
    except (HandshakeError, OSError, trio.TooSlowError) as exc:
        name = type(exc).__name__
        result["errors"][name] = result["errors"].get(name, 0) + 1


async def storm(args: argparse.Namespace, port: int, pid: int) -> dict[str, Any]:
    url = f"ws://127.0.0.1:{port}/ws"
    server = psutil.Process(pid)
    server.cpu_percent(None)
    rss_before = server.memory_info().rss / 2**20
    result: dict[str, Any] = {"served": 0, "closed": {}, "errors": {}, "answered_at": []}
    served: list[list[float]] = []
    t0 = trio.current_time()
    until = t0 + args.observe
    async with trio.open_nursery() as nursery:
        for _ in range(args.attempts):
            nursery.start_soon(attempt, url, result, served, t0, until)
        peak_rss = 0.0
        peak_fds = 0
        while trio.current_time() < until:
            await trio.sleep(0.5)
            try:
                peak_rss = max(peak_rss, server.memory_info().rss / 2**20)
                peak_fds = max(peak_fds, server.num_fds())
            except psutil.Error:
                break
    cpu = server.cpu_percent(None)
    # Inter-arrival of the served clients; also alone for the first ticks (the storm).
    gaps = [b - a for arrivals in served for a, b in itertools.pairwise(arrivals)]
    storm_gaps = [b - a for arrivals in served for a, b in itertools.pairwise(arrivals[:4])]
    within = lambda frac: (sum(abs(g - args.interval) <= frac * args.interval  # noqa: E731
                               for g in gaps) / len(gaps) * 100 if gaps else 0.0)
    answered = sorted(result["answered_at"])
    return {
        "attempts": args.attempts, "max_clients": args.max_clients,
        "interval": args.interval, "observe_s": args.observe,
        "served": result["served"], "closed": result["closed"], "errors": result["errors"],
        "all_answered_after_s": round(answered[-1], 3) if answered else None,
        "median_answer_s": round(answered[len(answered) // 2], 3) if answered else None,
        "inter_arrival_s": _spread(gaps),
        "inter_arrival_first_ticks_s": _spread(storm_gaps),
        "within_10_percent": round(within(0.10), 2),
        "within_20_percent": round(within(0.20), 2),
        "server_cpu_percent": cpu,
        "server_rss_mb": {"before": round(rss_before, 1), "peak": round(peak_rss, 1)},
        "server_peak_fds": peak_fds,
    }


#: The storm of --staged, run in its own interpreter so that its handshakes
#: do not share an event loop with the clients being measured.
_STORM_CHILD = """
import sys, trio
from trio_websocket import ConnectionClosed, open_websocket_url
url, n, result = sys.argv[1], int(sys.argv[2]), {}
async def one():
    ws = None
    try:
        with trio.fail_after(30):
            async with open_websocket_url(url) as ws:
                await ws.get_message()
                result["served"] = result.get("served", 0) + 1
    except ConnectionClosed as exc:
        result[str(exc.reason.code)] = result.get(str(exc.reason.code), 0) + 1
        if ws is not None and getattr(ws, "_stream", None) is not None:
            await ws._stream.aclose()
    except Exception as exc:
        result[type(exc).__name__] = result.get(type(exc).__name__, 0) + 1
async def main():
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
trio.run(main)
print(repr(result))
"""


async def staged(args: argparse.Namespace, port: int, pid: int) -> dict[str, Any]:
    """max_clients served first; then the rest of the attempts as a storm from a child."""
    url = f"ws://127.0.0.1:{port}/ws"
    per: list[list[float]] = [[] for _ in range(args.max_clients)]
    ready = trio.Semaphore(0)

    async def watch(arrivals: list[float]) -> None:
        async with open_websocket_url(url) as ws:
            await ws.get_message()
            ready.release()
            while True:
                await ws.get_message()
                arrivals.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        for arrivals in per:
            nursery.start_soon(watch, arrivals)
        with trio.fail_after(60):
            for _ in per:
                await ready.acquire()
        for arrivals in per:
            arrivals.clear()  # from here: all connected
        await trio.sleep(4 * args.interval)
        storm_at = trio.current_time()
        child = await trio.run_process(
            [sys.executable, "-c", _STORM_CHILD, url, str(args.attempts - args.max_clients)],
            capture_stdout=True)
        storm_end = trio.current_time()
        await trio.sleep(4 * args.interval)
        nursery.cancel_scope.cancel()

    def window(keep: Any) -> dict[str, Any]:
        gaps = [b - a for arrivals in per for a, b in itertools.pairwise(arrivals) if keep(a, b)]
        inside = sum(abs(g - args.interval) <= 0.1 * args.interval for g in gaps)
        return {**_spread(gaps), "within_10_percent": round(100 * inside / len(gaps), 1)
                if gaps else None}

    return {"mode": "staged", "attempts": args.attempts, "max_clients": args.max_clients,
            "interval": args.interval, "storm_result": child.stdout.decode().strip(),
            "storm_s": round(storm_end - storm_at, 2),
            "inter_arrival_before_storm_s": window(lambda a, b: b < storm_at),
            "inter_arrival_during_storm_s": window(
                lambda a, b: b >= storm_at and a <= storm_end + args.interval),
            "inter_arrival_after_storm_s": window(lambda a, b: a > storm_end + args.interval)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attempts", type=int, default=3000)
    parser.add_argument("--max-clients", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--observe", type=float, default=10.0,
                        help="seconds to watch the served clients (default 10)")
    parser.add_argument("--staged", action="store_true",
                        help="serve max_clients first, then storm with the rest from a "
                             "separate process, and compare the cadence before/during/after")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not 0 < args.attempts <= 10_000 or not 0 < args.observe <= 300:
        parser.error("--attempts must be in (0, 10000] and --observe in (0, 300]")
    nofile = raise_nofile(2 * args.attempts + 1000)  # the server inherits it
    with tempfile.TemporaryDirectory(prefix="cc-storm-") as tmp:
        directory = Path(tmp)
        config = write_config(directory, components=5, crashers=0, interval=args.interval,
                              max_clients=args.max_clients)
        server = start_server(config, directory / "output.txt")
        try:
            figures = trio.run(staged if args.staged else storm, args, server.port,
                               server.proc.pid)
        finally:
            status = server.stop()
        output = server.output.read_text(errors="replace")
    figures["rlimit_nofile"] = nofile
    figures["server_exit_status"] = status
    figures["server_error_lines"] = [ln for ln in output.splitlines()
                                     if " ERROR " in ln or "Traceback" in ln][:10]
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    if args.staged:
        return 0 if status == 0 else 1
    refused = figures["closed"].get(1013, 0)
    ok = (figures["served"] == min(args.attempts, args.max_clients)
          and refused == args.attempts - figures["served"] and not figures["errors"]
          and status == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
