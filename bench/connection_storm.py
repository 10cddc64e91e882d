"""A WebSocket connection storm against `max_clients`: who is served, who is refused, and how fast.

    python bench/connection_storm.py [--attempts 3000] [--max-clients 1000]
                                     [--interval 0.5] [--observe 10] [--json out.json]
    python bench/connection_storm.py --staged [...]

Starts `python -m core` on 127.0.0.1 (free port) with `max_clients`, then
opens `--attempts` WebSocket connections at once. Expected: exactly
`max_clients` are served (they get the snapshot and one per tick), the rest
are closed with 1013 right after the handshake, and the served ones keep
their cadence while the storm hits (inter-arrival within 10-20 % of the
interval). Reports the counts, the time until every attempt had its
answer, the served clients' inter-arrival spread, and the server's CPU and
RSS.

`--staged` connects `max_clients` lean watchers first (bench/arrivals.py),
then sends the rest of the attempts from a separate process, and compares
the served clients before, during and after that storm: inter-arrival and
lag (arrival minus the snapshot's `metrics.timestamp`), each timed twice,
when the snapshot reached the client's kernel (`SO_TIMESTAMP`: the
server's part) and when the watcher process read it (the client's CPU is
shared with the storm's on a small machine). `--storm-nice 19` runs the
storm's process at the lowest priority, as if it came from elsewhere.

Bounded: one storm, `--observe` seconds of watching, 127.0.0.1 only; ends
only the supervisor it started (by pid).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arrivals import Watcher, watch
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
import json, os, sys, trio
from trio_websocket import ConnectionClosed, open_websocket_url
url, n, result = sys.argv[1], int(sys.argv[2]), {}
os.nice(int(sys.argv[3]))
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
print(json.dumps(result))
"""


async def staged(args: argparse.Namespace, port: int, pid: int) -> dict[str, Any]:
    """max_clients served first; then the rest of the attempts as a storm from a child.

    The served clients are bench/arrivals.py watchers: each snapshot is
    timed when it reached the client's kernel and when this process read it.
    """
    url = f"ws://127.0.0.1:{port}/ws"
    watchers = [Watcher() for _ in range(args.max_clients)]
    ready = trio.Semaphore(0)
    async with trio.open_nursery() as nursery:
        for watcher in watchers:
            nursery.start_soon(watch, port, watcher, ready)
        with trio.fail_after(60):
            for _ in watchers:
                await ready.acquire()
        await trio.sleep(args.interval)  # everyone has had a snapshot
        # This process' own full collections (1,000 clients' objects) would
        # look like the server's delay: none while it measures (~20 s).
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            window_at = time.time()
            await trio.sleep(4 * args.interval)
            storm_at = time.time()
            child = await trio.run_process(
                [sys.executable, "-c", _STORM_CHILD, url,
                 str(args.attempts - args.max_clients), str(args.storm_nice)],
                capture_stdout=True)
            storm_end = time.time()
            await trio.sleep(4 * args.interval)
        finally:
            gc.enable()
            gc.unfreeze()
        nursery.cancel_scope.cancel()

    def window(start: float, end: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for clock in ("kernel", "read"):
            gaps: list[float] = []
            lags: list[float] = []
            for watcher in watchers:
                times = [getattr(a, clock) for a in watcher.arrivals if a.kernel >= window_at]
                lags += [1000 * (getattr(a, clock) - a.stamp) for a in watcher.arrivals
                         if start <= getattr(a, clock) <= end]
                # Every gap that overlaps the window.
                gaps += [b - a for a, b in itertools.pairwise(times) if b >= start and a <= end]
            inside = sum(abs(g - args.interval) <= 0.1 * args.interval for g in gaps)
            out[clock] = {"inter_arrival_s": _spread(gaps),
                          "within_10_percent": round(100 * inside / len(gaps), 1) if gaps
                          else None, "lag_ms": _spread(lags)}
        return out

    return {"mode": "staged", "attempts": args.attempts, "max_clients": args.max_clients,
            "interval": args.interval, "storm_result": json.loads(child.stdout),
            "storm_s": round(storm_end - storm_at, 2),
            "closed_by_server": sum(w.close_code is not None for w in watchers),
            "before_storm": window(window_at, storm_at),
            "during_storm": window(storm_at, storm_end),
            "after_storm": window(storm_end, time.time())}


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
    parser.add_argument("--storm-nice", type=int, default=0, choices=range(20), metavar="0-19",
                        help="--staged: run the storm's process at this nice value, so that "
                             "it stands for clients on other machines (default 0)")
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
        # The storm is refused whole, every served client stays served.
        ok = (figures["storm_result"] == {"1013": args.attempts - args.max_clients}
              and figures["closed_by_server"] == 0 and status == 0)
        return 0 if ok else 1
    refused = figures["closed"].get(1013, 0)
    ok = (figures["served"] == min(args.attempts, args.max_clients)
          and refused == args.attempts - figures["served"] and not figures["errors"]
          and status == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
