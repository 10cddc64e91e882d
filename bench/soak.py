"""Bounded soak of a real supervisor: is memory flat, is the stream on time?

    python bench/soak.py [--minutes 10] [--components 50] [--crashers 10]
                         [--clients 500] [--interval 2.0] [--log-lines N] [--json out.json]
    python bench/soak.py --leak-check [--minutes 2] [--clients 50] [--control-rate 5]

Starts `python -m core` on 127.0.0.1 (free port) with `--components`
components, `--crashers` of which crash-loop (restart = "always", a child
that exits after a random 1-5 s); connects `--clients` WebSocket clients;
sends one control request per second (restart of a random component).
Reports the supervisor's RSS and CPU % over time, WebSocket ticks missed
(a gap in `metrics.timestamp` greater than 1.5 x interval, as seen by each
client), the client-side inter-arrival spread, and every error.

The RSS of a run shorter than the history ring (at least 30 min of points)
grows while that ring fills, by design. `--leak-check` tells that apart
from a leak: the same load in one process, with the history and log rings
shrunk so they are full after a warm-up, and tracemalloc's difference of
the Python heap between the end of the warm-up and the end of the run.

Everything is bounded: the run stops by itself after `--minutes`, sends only
to 127.0.0.1, and ends only the supervisor it started (by pid), which stops
its own children.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

ROOT = Path(__file__).resolve().parent.parent
_ANNOUNCE = re.compile(r"Control Center dashboard: https?://127\.0\.0\.1:(\d+)/")
_TIMESTAMP = re.compile(r'"timestamp": "([^"]+)"')

SLEEPER = ["{python}", "-c", "import time; time.sleep(3600)"]
CRASHER = ["{python}", "-c",
           "import random, sys, time; time.sleep(random.uniform(1, 5)); sys.exit(1)"]


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def write_config(directory: Path, *, components: int, crashers: int, interval: float,
                 **server: object) -> Path:
    """A config of sleepers and crash-loopers under `directory`."""
    settings: dict[str, object] = {"host": "127.0.0.1", "port": 0, "interval": interval,
                                   "data_dir": str(directory / "data"),
                                   "log_dir": str(directory / "logs")}
    settings.update(server)
    lines = ["[server]", *(f"{k} = {_toml(v)}" for k, v in settings.items()), ""]
    for i in range(components):
        crash = i < crashers
        lines += [f"[components.c{i:03d}]", 'plugin = "process"',
                  f"command = {_toml(CRASHER if crash else SLEEPER)}"]
        if crash:
            # Each 1-5 s run counts as stable: restarted at once, never given up.
            lines += ['restart = "always"', "stable_after = 0.5", "backoff_initial = 0.2"]
        lines.append("")
    path = directory / "config.toml"
    path.write_text("\n".join(lines))
    return path


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    output: Path

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(5)


def start_server(config: Path, output: Path, timeout: float = 30.0) -> Server:
    """`python -m core --config <config>`; returns once it announced its port."""
    with output.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "core", "--config", str(config)],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _ANNOUNCE.search(output.read_text(errors="replace"))
        if found:
            return Server(proc, int(found.group(1)), output)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    server = Server(proc, 0, output)
    server.stop(5)
    raise RuntimeError(f"python -m core did not start:\n{output.read_text(errors='replace')}")


def parse_ts(text: str) -> float | None:
    """Seconds since the epoch of the snapshot's metrics.timestamp, from its JSON."""
    found = _TIMESTAMP.search(text)
    raw = found.group(1) if found else (json.loads(text).get("metrics") or {}).get("timestamp")
    if not raw:
        return None
    return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()


@dataclass
class ClientStats:
    """What every client saw, summed."""

    interval: float
    messages: int = 0
    missed_ticks: int = 0
    gaps_over: int = 0
    max_ts_gap: float = 0.0
    arrivals: list[float] = field(default_factory=list)  # local inter-arrival, sampled
    closes: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    connected: int = 0

    def saw(self, gap_ts: float, gap_local: float) -> None:
        self.messages += 1
        self.max_ts_gap = max(self.max_ts_gap, gap_ts)
        if gap_ts > 1.5 * self.interval:
            self.gaps_over += 1
            self.missed_ticks += max(1, round(gap_ts / self.interval) - 1)
        if len(self.arrivals) < 200_000:
            self.arrivals.append(gap_local)


async def ws_client(url: str, stats: ClientStats, stop: trio.Event,
                    connected: trio.Semaphore | None = None) -> None:
    """Follow the stream until `stop`; count gaps; reconnect (bounded) if dropped."""
    for _attempt in range(5):
        try:
            async with open_websocket_url(url) as ws:
                first = await ws.get_message()
                stats.connected += 1
                if connected is not None:
                    connected.release()
                prev_ts, prev_local = parse_ts(first), trio.current_time()
                async with trio.open_nursery() as nursery:
                    async def watch_stop() -> None:
                        await stop.wait()
                        nursery.cancel_scope.cancel()
                    nursery.start_soon(watch_stop)
                    while True:
                        text = await ws.get_message()
                        ts, now = parse_ts(text), trio.current_time()
                        if ts is not None and prev_ts is not None:
                            stats.saw(ts - prev_ts, now - prev_local)
                        prev_ts, prev_local = ts, now
        except ConnectionClosed as exc:
            code = exc.reason.code if exc.reason else -1
            stats.closes[code] = stats.closes.get(code, 0) + 1
            stats.errors.append(f"websocket closed by the server: {exc.reason}")
        except (HandshakeError, OSError) as exc:
            stats.errors.append(f"websocket connect failed: {exc!r}")
            await trio.sleep(1)
        if stop.is_set():
            return
    stats.errors.append("a websocket client gave up after 5 attempts")


async def controller(base: str, ids: list[str], stop: trio.Event, out: dict[str, Any],
                     rate: float = 1.0) -> None:
    """One restart of a random component per 1/rate seconds."""
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    errors: list[str] = []
    rng = random.Random(1)
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        next_at = trio.current_time()
        while not stop.is_set():
            cid = rng.choice(ids)
            t0 = trio.current_time()
            try:
                resp = await http.post(f"/api/components/{cid}/restart")
                statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
                if resp.status_code != 200:
                    errors.append(f"restart {cid}: {resp.status_code} {resp.text[:200]}")
            except httpx.HTTPError as exc:
                errors.append(f"restart {cid}: {exc!r}")
            latencies.append(trio.current_time() - t0)
            next_at += 1.0 / rate
            with trio.move_on_at(next_at):
                await stop.wait()
    out.update(statuses=statuses, errors=errors, requests=len(latencies),
               latency_ms=_spread([x * 1000 for x in latencies]))


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"n": len(values), "min": round(ordered[0], 3), "median": round(pick(0.5), 3),
            "p99": round(pick(0.99), 3), "max": round(ordered[-1], 3),
            "mean": round(statistics.fmean(values), 3)}


async def sampler(pid: int, stop: trio.Event, samples: list[dict[str, float]],
                  every: float, t0: float) -> None:
    """RSS, CPU %, fds and threads of the supervisor process every `every` seconds."""
    proc = psutil.Process(pid)
    proc.cpu_percent(None)
    while True:
        with trio.move_on_after(every):
            await stop.wait()
        try:
            with proc.oneshot():
                samples.append({"t": round(trio.current_time() - t0, 1),
                                "rss_mb": round(proc.memory_info().rss / 2**20, 2),
                                "cpu_percent": proc.cpu_percent(None),
                                "fds": proc.num_fds(), "threads": proc.num_threads(),
                                "children": len(proc.children())})
        except psutil.Error:
            return
        if stop.is_set():
            return


def slope_mb_per_min(samples: list[dict[str, float]]) -> float:
    """Least-squares slope of RSS over time."""
    if len(samples) < 3:
        return 0.0
    xs = [s["t"] / 60 for s in samples]
    ys = [s["rss_mb"] for s in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


async def soak(args: argparse.Namespace, port: int, pid: int) -> dict[str, Any]:
    stop = trio.Event()
    stats = ClientStats(args.interval)
    control: dict[str, Any] = {}
    samples: list[dict[str, float]] = []
    ids = [f"c{i:03d}" for i in range(args.components)]
    t0 = trio.current_time()
    me = psutil.Process()
    me.cpu_percent(None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sampler, pid, stop, samples, args.sample_every, t0)
        connected = trio.Semaphore(0)
        for i in range(args.clients):
            nursery.start_soon(ws_client, f"ws://127.0.0.1:{port}/ws", stats, stop, connected)
            if i % 50 == 49:
                await trio.sleep(0.05)  # a ramp, not a storm: that is the storm bench
        with trio.move_on_after(60):
            for _ in range(args.clients):
                await connected.acquire()
        ramp = trio.current_time() - t0
        print(f"{stats.connected} clients connected in {ramp:.1f} s", flush=True)
        nursery.start_soon(controller, f"http://127.0.0.1:{port}", ids, stop, control,
                           args.control_rate)
        end = t0 + args.minutes * 60
        while trio.current_time() < end:
            with trio.move_on_at(min(end, trio.current_time() + 60)):
                await trio.sleep_forever()
            last = samples[-1] if samples else {}
            print(f"t={trio.current_time() - t0:6.0f} s rss={last.get('rss_mb')} MB "
                  f"cpu={last.get('cpu_percent')} % messages={stats.messages} "
                  f"missed={stats.missed_ticks} errors={len(stats.errors)}", flush=True)
        stop.set()
    load_cpu = me.cpu_percent(None)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        history_points = len((await http.get("/api/history")).json()["points"])
    return {"clients": stats, "control": control, "samples": samples, "ramp_s": ramp,
            "load_generator_cpu_percent": load_cpu, "history_points": history_points}


async def _leak_check(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    import gc
    import tracemalloc
    from functools import partial

    import core.hub
    from core.config import load
    from core.plugins import PluginManager
    from core.supervisor import Supervisor
    from core.web import serve

    core.hub.MIN_HISTORY_SECONDS = 10.0  # full after the warm-up (diagnostic only)
    path = write_config(directory, components=args.components, crashers=args.crashers,
                        interval=args.interval, history_seconds=10.0, log_lines=20,
                        control_rate=1000.0)
    plugins = PluginManager(load_entry_points=False)
    config = load(path, plugins=plugins.names, validate=plugins.validate)
    hub = core.hub.Hub(interval=args.interval, history_seconds=10.0)
    sup = Supervisor(config, plugins, hub)
    stop, shutdown = trio.Event(), trio.Event()
    stats = ClientStats(args.interval)
    ids = [f"c{i:03d}" for i in range(args.components)]
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve, sup, hub, config.server, shutdown=shutdown))
        await nursery.start(sup.run)
        for _ in range(args.clients):
            nursery.start_soon(ws_client, f"ws://127.0.0.1:{port}/ws", stats, stop)
        control: dict[str, Any] = {}
        nursery.start_soon(controller, f"http://127.0.0.1:{port}", ids, stop, control,
                           args.control_rate)
        await trio.sleep(40)  # warm-up: every ring full, every code path taken
        gc.collect()
        before = tracemalloc.take_snapshot()
        await trio.sleep(args.minutes * 60)
        gc.collect()
        after = tracemalloc.take_snapshot()
        stop.set()
        await sup.shutdown()
        shutdown.set()
        await trio.sleep(1)  # the clients get their 1001
        nursery.cancel_scope.cancel()  # sup.run and serve
    # What this script records itself (arrival times, latencies) is not the server's.
    mine = [tracemalloc.Filter(False, __file__)]
    diff = after.filter_traces(mine).compare_to(before.filter_traces(mine), "lineno")
    return {"measured_s": args.minutes * 60, "components": args.components,
            "clients": args.clients, "control_requests": control.get("requests"),
            "heap_growth_kb": round(sum(d.size_diff for d in diff) / 1024, 1),
            "top_growth": [str(d) for d in diff[:8]], "ws_errors": stats.errors[:5]}


def leak_check(args: argparse.Namespace) -> int:
    import tracemalloc

    tracemalloc.start(1)
    with tempfile.TemporaryDirectory(prefix="cc-leak-") as tmp:
        figures = trio.run(_leak_check, args, Path(tmp))
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 1 if figures["heap_growth_kb"] > 1024 else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--components", type=int, default=50)
    parser.add_argument("--crashers", type=int, default=10)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--control-rate", type=float, default=1.0,
                        help="control requests per second (default 1)")
    parser.add_argument("--sample-every", type=float, default=10.0,
                        help="seconds between RSS/CPU samples (default 10)")
    parser.add_argument("--log-lines", type=int, default=None,
                        help="[server] log_lines (in-memory lines per component); a small "
                             "value fills that bounded buffer early in the run")
    parser.add_argument("--leak-check", action="store_true",
                        help="in one process: Python heap growth once every ring is full")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not 0 < args.minutes <= 120 or not 0 < args.clients <= 5000:
        parser.error("--minutes must be in (0, 120] and --clients in (0, 5000]")
    if args.leak_check:
        return leak_check(args)

    with tempfile.TemporaryDirectory(prefix="cc-soak-") as tmp:
        directory = Path(tmp)
        config = write_config(directory, components=args.components, crashers=args.crashers,
                              interval=args.interval, max_clients=args.clients + 100,
                              control_rate=max(20.0, args.control_rate * 2),
                              **({"log_lines": args.log_lines} if args.log_lines else {}))
        server = start_server(config, directory / "output.txt")
        try:
            result = trio.run(soak, args, server.port, server.proc.pid)
        finally:
            status = server.stop()
        output = server.output.read_text(errors="replace")
    problems = [ln for ln in output.splitlines()
                if " ERROR " in ln or " CRITICAL " in ln or "Traceback" in ln]
    return report(args, result, status, problems)


def report(args: argparse.Namespace, result: dict[str, Any], status: int,
           problems: list[str]) -> int:
    stats: ClientStats = result["clients"]
    samples = result["samples"]
    warm = [s for s in samples if s["t"] >= 60] or samples
    rss = [s["rss_mb"] for s in warm]
    cpu = [s["cpu_percent"] for s in samples[1:]] or [0.0]
    points = samples[:: max(1, len(samples) // 10)] + samples[-1:]
    expected = args.clients * args.minutes * 60 / args.interval
    figures = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "minutes": args.minutes, "components": args.components, "crashers": args.crashers,
        "clients": args.clients, "interval": args.interval,
        "ramp_s": round(result["ramp_s"], 2),
        "rss_mb": {"start": samples[0]["rss_mb"] if samples else None,
                   "after_warmup": rss[0] if rss else None,
                   "end": samples[-1]["rss_mb"] if samples else None,
                   "max": max(rss) if rss else None,
                   "slope_mb_per_min_after_warmup": round(slope_mb_per_min(warm), 4)},
        "rss_points": [f"t={p['t']:.0f}s {p['rss_mb']:.1f}MB" for p in points],
        "cpu_percent": {"mean": round(statistics.fmean(cpu), 1), "max": max(cpu)},
        "fds": {"start": samples[0]["fds"] if samples else None,
                "end": samples[-1]["fds"] if samples else None},
        "ws": {"connected": stats.connected, "messages": stats.messages,
               "expected_about": int(expected),
               "missed_ticks": stats.missed_ticks, "gaps_over_1.5x": stats.gaps_over,
               "max_timestamp_gap_s": round(stats.max_ts_gap, 3),
               "inter_arrival_s": _spread(stats.arrivals),
               "closes": stats.closes, "errors": len(stats.errors),
               "first_errors": stats.errors[:5]},
        "control": result["control"],
        "load_generator_cpu_percent": result["load_generator_cpu_percent"],
        # The history ring (at least 30 min of points) fills during a soak:
        # RSS grows with it until it is full, by design.
        "history_points_at_end": result["history_points"],
        "server_exit_status": status,
        "server_error_lines": problems[:20],
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    failed = (status != 0 or stats.errors or problems
              or result["control"].get("errors"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
