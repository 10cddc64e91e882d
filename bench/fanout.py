"""WebSocket fan-out benchmark: our server against a bare trio-websocket broadcaster.

    .venv/bin/python bench/fanout.py                      # N = 100 500 1000 2000
    .venv/bin/python bench/fanout.py -n 100 500 --ticks 5 --interval 1

For each server kind and each N: the server runs in one process
(bench/fanout_server.py or bench/bare_broadcaster.py), N trio-websocket
clients in another (this file, `clients` mode). Each client records connect
time, inter-arrival of snapshots, lag (receipt time minus the snapshot's
metrics.timestamp) and lost ticks (an inter-arrival above 1.5 intervals
counts its missing ticks), with its own garbage collector paused while it
measures; this process samples the server's CPU and RSS
with psutil over the measuring window, and for our server measures
GET /api/status latency with the N clients connected. Everything binds
127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import trio

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from fanout_doc import raise_fd_limit  # noqa: E402

SERVERS = {"ours": BENCH / "fanout_server.py", "bare": BENCH / "bare_broadcaster.py"}
#: Clients opening their connection at the same time.
CONNECT_BATCH = 100


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


# -- clients mode (the load generator process) -----------------------------------

async def run_clients(port: int, n: int, interval: float, ticks: int) -> dict[str, Any]:
    from trio_websocket import ConnectionClosed, open_websocket_url

    url = f"ws://127.0.0.1:{port}/ws"
    connect_times: list[float] = []
    failures: list[str] = []
    window: dict[str, float] = {}
    per_client: list[list[tuple[float, str]]] = []
    all_connected = trio.Event()
    scopes: list[trio.CancelScope] = []
    limiter = trio.Semaphore(CONNECT_BATCH)

    async def one() -> None:
        # Receipt time and text only: parsing waits until the window closed,
        # so the load generator's own CPU weighs as little as possible.
        received: list[tuple[float, str]] = []
        per_client.append(received)
        await limiter.acquire()
        holding = True
        try:
            t0 = time.perf_counter()
            async with open_websocket_url(url, connect_timeout=30) as ws:
                connect_times.append(time.perf_counter() - t0)
                limiter.release()
                holding = False
                if len(connect_times) == n:
                    all_connected.set()
                try:
                    with trio.CancelScope() as scope:
                        scopes.append(scope)
                        while True:
                            text = await ws.get_message()
                            received.append((time.time(), text))
                finally:
                    stream = getattr(ws, "_stream", None)
                    if stream is not None and ws.closed is not None:
                        await stream.aclose()
        except (OSError, ConnectionClosed, trio.TooSlowError) as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a handshake error etc.: count it, keep going
            failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            if holding:
                limiter.release()

    t_start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
        with trio.move_on_after(120):
            await all_connected.wait()
        connect_all = time.perf_counter() - t_start
        await trio.sleep(interval)  # settle
        # No full collection of this process' own objects (N clients) while
        # it measures: its pauses would count as the server's lag.
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            window["start"] = time.time()
            window["end"] = window["start"] + ticks * interval
            print(json.dumps({"window": window["start"]}), flush=True)  # tell the parent
            await trio.sleep(ticks * interval + 0.5)
        finally:
            gc.enable()
            gc.unfreeze()
        for scope in scopes:
            scope.cancel()
    gaps, lags, lost, short = [], [], 0, 0
    expected = ticks
    for messages in per_client:
        received = []
        for now, text in messages:
            if window["start"] <= now <= window["end"]:
                stamp = json.loads(text)["metrics"]["timestamp"]
                received.append((now, now - datetime.fromisoformat(stamp).timestamp()))
        times = [t for t, _ in received]
        lags.extend(lag for _, lag in received)
        for a, b in itertools.pairwise(times):
            gaps.append(b - a)
            if b - a > 1.5 * interval:
                lost += round((b - a) / interval) - 1
        if len(received) < expected - 1:
            short += 1
    return {
        "n": n, "connected": len(connect_times), "failures": len(failures),
        "failure_sample": failures[:3], "connect_all_s": connect_all,
        "connect_p50_ms": pct(connect_times, 50) * 1e3,
        "connect_p99_ms": pct(connect_times, 99) * 1e3,
        "gap_p50_ms": pct(gaps, 50) * 1e3, "gap_p99_ms": pct(gaps, 99) * 1e3,
        "lag_p50_ms": pct(lags, 50) * 1e3, "lag_p99_ms": pct(lags, 99) * 1e3,
        "lag_max_ms": max(lags, default=float("nan")) * 1e3,
        "messages": len(lags), "lost": lost, "clients_short": short,
    }


# -- orchestration ------------------------------------------------------------------

def status_latency(port: int, count: int = 50) -> float:
    import httpx

    samples = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        for _ in range(count):
            t0 = time.perf_counter()
            http.get("/api/status").raise_for_status()
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e3


def measure(kind: str, n: int, interval: float, ticks: int) -> dict[str, Any]:
    server = subprocess.Popen([sys.executable, str(SERVERS[kind]), "--interval", str(interval)],
                              stdout=subprocess.PIPE, text=True)
    clients = None
    try:
        port = int(server.stdout.readline())
        proc = psutil.Process(server.pid)
        clients = subprocess.Popen(
            [sys.executable, __file__, "clients", "--port", str(port), "-n", str(n),
             "--interval", str(interval), "--ticks", str(ticks)],
            stdout=subprocess.PIPE, text=True)
        started = json.loads(clients.stdout.readline())  # the window opens
        assert "window" in started
        proc.cpu_percent()
        cpu_samples, rss = [], 0
        end = time.time() + ticks * interval
        while time.time() < end:
            time.sleep(min(0.5, interval))
            cpu_samples.append(proc.cpu_percent())
            rss = max(rss, proc.memory_info().rss)
        latency = status_latency(port) if kind == "ours" else None
        out, _ = clients.communicate(timeout=300)
        result = json.loads(out.strip().splitlines()[-1])
        result.update(kind=kind, server_cpu_percent=statistics.mean(cpu_samples),
                      server_rss_mb=rss / 2**20, status_p50_ms=latency)
        return result
    finally:
        for p in (clients, server):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def table(results: list[dict[str, Any]]) -> str:
    head = ("| server | N | connected | lost ticks | connect p99 ms | inter-arrival p50/p99 ms"
            " | lag p50 ms | lag p99 ms | lag max ms | server CPU % | server RSS MB"
            " | /api/status p50 ms |")
    lines = [head, "|" + "---|" * 12]
    for r in results:
        status = f"{r['status_p50_ms']:.1f}" if r["status_p50_ms"] is not None else "n/a"
        lines.append(
            f"| {r['kind']} | {r['n']} | {r['connected']} | {r['lost']} "
            f"| {r['connect_p99_ms']:.0f} | {r['gap_p50_ms']:.0f}/{r['gap_p99_ms']:.0f} "
            f"| {r['lag_p50_ms']:.1f} | {r['lag_p99_ms']:.1f} | {r['lag_max_ms']:.1f} "
            f"| {r['server_cpu_percent']:.1f} | {r['server_rss_mb']:.0f} | {status} |")
    return "\n".join(lines)


def summary(results: list[dict[str, Any]], kinds: list[str]) -> str:
    """Median lag p99 per server and N over the repeats, and ours / bare."""
    lines = ["| N | " + " | ".join(f"{k} lag p99 ms (median)" for k in kinds)
             + (" | ours / bare |" if kinds == ["ours", "bare"] else " |"),
             "|" + "---|" * (len(kinds) + 1 + (kinds == ["ours", "bare"]))]
    for n in sorted({r["n"] for r in results}):
        medians = [statistics.median(r["lag_p99_ms"] for r in results
                                     if r["n"] == n and r["kind"] == k) for k in kinds]
        row = f"| {n} | " + " | ".join(f"{m:.1f}" for m in medians)
        if kinds == ["ours", "bare"]:
            row += f" | {medians[0] / medians[1]:.2f}"
        lines.append(row + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "clients"])
    parser.add_argument("-n", type=int, nargs="+", default=[100, 500, 1000, 2000])
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--ticks", type=int, default=8, help="ticks measured per run")
    parser.add_argument("--port", type=int)
    parser.add_argument("--servers", nargs="+", default=["ours", "bare"],
                        choices=list(SERVERS))
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per server and N (alternating); the summary takes medians")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args()
    raise_fd_limit()
    if args.mode == "clients":
        result = trio.run(run_clients, args.port, args.n[0], args.interval, args.ticks)
        print(json.dumps(result), flush=True)
        return 0
    results = []
    for n in args.n:
        for _ in range(args.repeat):
            for kind in args.servers:
                r = measure(kind, n, args.interval, args.ticks)
                results.append(r)
                print(f"{kind} N={n}: connected {r['connected']}/{n}, lost {r['lost']}, "
                      f"lag p99 {r['lag_p99_ms']:.1f} ms, cpu {r['server_cpu_percent']:.0f} %,"
                      f" rss {r['server_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
    print(table(results))
    if args.repeat > 1 or len(args.servers) > 1:
        print()
        print(summary(results, args.servers))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
