"""Fan-in: one parent Control Center following many remotes.

    .venv/bin/python bench/fanin.py --remotes 20 --components 50 --seconds 60

Three processes: the remotes (`--remotes` servers of core.web.serve in one
process, each with a synthetic hub publishing `--components` components
every interval, at its own phase), the parent (a real Supervisor, Hub and
Federation behind core.web.serve, as `python -m core` wires them, with
every publish timed) and this driver, which holds `--clients` WebSocket
clients on the parent and measures:

- the parent's tick: Hub.publish wall time (the merge, the JSON encoding,
  the history point), and publish -> end of the fan-out pass;
- cadence at the parent's clients (gaps between snapshots);
- the delay from a remote's publish of a change (component c0 carries the
  remote's publish time) to its arrival at a client of the parent;
- the parent's CPU (process CPU time over the window) and RSS.

The same parent with no remotes runs first, in the same run (`--baseline`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.config import ServerConfig, parse  # noqa: E402
from core.hub import Hub  # noqa: E402
from core.snapshot import iso_utc  # noqa: E402
from core.web import serve  # noqa: E402

INTERVAL = 2.0


def component(i: int, now: float) -> dict[str, Any]:
    return {"name": f"Component {i}", "state": "running", "pid": 10_000 + i,
            "uptime": 3600.5 + i, "cpu_percent": 2.1, "memory_mb": 45.2, "error": None,
            "last_updated": iso_utc(now), "plugin": "process", "restarts": 0,
            "exit_code": None, "health": "healthy", "next_restart_in": None,
            "depends_on": []}


def remote_doc(n: int, instance: str) -> dict[str, Any]:
    now = time.time()
    comps = {f"c{i}": component(i, now) for i in range(n)}
    comps["c0"]["bench_published"] = now  # the change the driver follows
    return {"components": comps, "instance": instance, "metrics": {
        "timestamp": iso_utc(now), "total_concepts": 0, "total_associations": 0,
        "storage_size_mb": 0, "queries_per_second": 0, "avg_latency_ms": 0,
        "cpu_percent": 5.0, "memory_percent": 40.0}}


# -- the remotes' process --------------------------------------------------------------

async def run_remotes(count: int, components: int, interval: float) -> None:
    async def one(index: int, task_status: trio.TaskStatus[int]) -> None:
        hub = Hub(interval=interval, history_seconds=0)
        instance = str(uuid.uuid4())
        hub.publish(remote_doc(components, instance))
        server = ServerConfig(port=0, interval=interval)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(lambda task_status: serve(
                None, hub, server, shutdown=trio.Event(), task_status=task_status))
            task_status.started(port)
            # Each remote at its own phase, as independent machines would be.
            next_at = trio.current_time() + interval * (index + 0.5) / count
            while True:
                await trio.sleep_until(next_at)
                next_at += interval
                hub.publish(remote_doc(components, instance))

    async with trio.open_nursery() as nursery:
        ports = [await nursery.start(one, i) for i in range(count)]
        print(json.dumps(ports), flush=True)


# -- the parent's process --------------------------------------------------------------

async def run_parent(ports: list[int], interval: float, seconds: float) -> None:
    from core.app import freeze_startup_objects
    from core.collector import PacedCollector
    from core.federation import Federation
    from core.plugins import PluginManager
    from core.supervisor import Supervisor

    text = "".join(f'[remotes.r{i}]\nurl = "http://127.0.0.1:{p}"\n'
                   for i, p in enumerate(ports))
    config = parse(f"[server]\ninterval = {interval}\nport = 0\n" + text,
                   Path("/nonexistent/fanin.toml"))
    hub = Hub(interval=interval, history_seconds=config.server.history_seconds)
    federation = Federation(config.remotes, str(uuid.uuid4()), interval)
    hub.extender = federation
    publish = hub.publish
    ticks: list[float] = []
    fanouts: list[float] = []
    last_end = [0.0]

    def timed(doc: dict[str, Any]) -> Any:
        t0 = time.perf_counter()
        snap = publish(doc)
        last_end[0] = time.perf_counter()
        ticks.append(last_end[0] - t0)
        return snap

    hub.publish = timed  # type: ignore[method-assign]
    collector = PacedCollector()

    def after_fanout() -> None:
        fanouts.append(time.perf_counter() - last_end[0])
        collector.collect_if_due()

    supervisor = Supervisor(config, PluginManager(load_entry_points=False), hub)
    server = ServerConfig(port=0, interval=interval)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve(
            supervisor, hub, server, shutdown=trio.Event(), after_fanout=after_fanout,
            task_status=task_status))
        await nursery.start(supervisor.run)
        await nursery.start(federation.run)
        freeze_startup_objects()
        collector.take_over()
        print(json.dumps({"port": port}), flush=True)
        await trio.sleep(seconds)
        sizes = len(hub.latest.text) if hub.latest else 0
        print(json.dumps({"ticks": ticks, "fanouts": fanouts, "doc_bytes": sizes,
                          "components": len(hub.latest.doc["components"])
                          if hub.latest else 0}), flush=True)
        nursery.cancel_scope.cancel()


# -- the driver ---------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


async def clients(port: int, count: int, seconds: float, warmup: float,
                  remotes: int) -> dict[str, Any]:
    from trio_websocket import open_websocket_url

    arrivals: list[list[float]] = [[] for _ in range(count)]
    delays: list[float] = []
    seen: dict[str, float] = {}
    start = trio.current_time()

    async def client(i: int) -> None:
        async with open_websocket_url(f"ws://127.0.0.1:{port}/ws",
                                      max_message_size=64 * 2**20) as ws:
            while True:
                text = await ws.get_message()
                now_wall, now = time.time(), trio.current_time()
                if now - start < warmup:
                    continue
                arrivals[i].append(now)
                if i or not remotes:
                    continue
                doc = json.loads(text)
                for r in range(remotes):
                    c0 = doc["components"].get(f"r{r}/c0")
                    if c0 is None or c0.get("state") != "running":
                        continue
                    pub = c0.get("bench_published")
                    if pub is not None and seen.get(f"r{r}") != pub:
                        seen[f"r{r}"] = pub
                        delays.append(now_wall - pub)

    with trio.move_on_after(warmup + seconds):
        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(client, i)
    gaps = [b - a for arr in arrivals for a, b in itertools.pairwise(arr)]
    return {"gaps": gaps, "delays": delays}


def spawn(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)


def measure(ports: list[int], args: argparse.Namespace) -> dict[str, Any]:
    import psutil

    seconds = args.seconds + args.warmup + 5
    parent = spawn(["parent", "--ports", json.dumps(ports), "--interval", str(args.interval),
                    "--seconds", str(seconds)])
    try:
        assert parent.stdout is not None
        port = json.loads(parent.stdout.readline())["port"]
        proc = psutil.Process(parent.pid)

        async def window() -> dict[str, Any]:
            async with trio.open_nursery() as nursery:
                result: dict[str, Any] = {}

                async def sample() -> None:
                    await trio.sleep(args.warmup)
                    t0, c0 = time.monotonic(), sum(proc.cpu_times()[:2])
                    rss = []
                    while time.monotonic() - t0 < args.seconds:
                        rss.append(proc.memory_info().rss)
                        await trio.sleep(1.0)
                    cpu = (sum(proc.cpu_times()[:2]) - c0) / (time.monotonic() - t0) * 100
                    result.update(cpu=cpu, rss_max=max(rss), rss_end=rss[-1])

                nursery.start_soon(sample)
                result.update(await clients(port, args.clients, args.seconds, args.warmup,
                                            len(ports)))
            return result

        result = trio.run(window)
        inside = json.loads(parent.stdout.readline())
    finally:
        parent.kill()
        parent.wait()
    skip = int(args.warmup / args.interval)
    ticks = [t * 1000 for t in inside["ticks"][skip:]]
    fanouts = [t * 1000 for t in inside["fanouts"][skip:]]
    gaps, delays = result["gaps"], result["delays"]
    lo, hi = args.interval * 0.9, args.interval * 1.1
    return {
        "remotes": len(ports), "components": inside["components"],
        "doc_kb": round(inside["doc_bytes"] / 1024, 1),
        "tick_ms_p50": round(pct(ticks, 50), 2), "tick_ms_p99": round(pct(ticks, 99), 2),
        "tick_ms_max": round(max(ticks), 2),
        "fanout_ms_p50": round(pct(fanouts, 50), 2), "fanout_ms_p99": round(pct(fanouts, 99), 2),
        "cadence_s_p1": round(pct(gaps, 1), 3), "cadence_s_p50": round(pct(gaps, 50), 3),
        "cadence_s_p99": round(pct(gaps, 99), 3),
        "cadence_within_10pct": round(sum(lo <= g <= hi for g in gaps) / max(len(gaps), 1), 4),
        "delay_s_p50": round(pct(delays, 50), 3) if delays else None,
        "delay_s_p99": round(pct(delays, 99), 3) if delays else None,
        "delay_samples": len(delays),
        "cpu_percent": round(result["cpu"], 1),
        "rss_mb_max": round(result["rss_max"] / 2**20, 1),
    }


#: In the page: the main thread's lag, sampled every 100 ms (a busy page answers late).
LAG_PROBE = """() => new Promise((done) => {
  const lags = []; let last = performance.now();
  const timer = setInterval(() => {
    const now = performance.now(); lags.push(now - last - 100); last = now;
    if (lags.length >= 200) { clearInterval(timer); done(lags); }
  }, 100);
})"""


def page(ports: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """The parent's dashboard in Chromium: time to show every card, then its main-thread lag."""
    from playwright.sync_api import sync_playwright

    parent = spawn(["parent", "--ports", json.dumps(ports), "--interval", str(args.interval),
                    "--seconds", "120"])
    try:
        assert parent.stdout is not None
        port = json.loads(parent.stdout.readline())["port"]
        want = len(ports) * args.components
        time.sleep(3 * args.interval)  # every remote followed
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                         args=["--no-sandbox", "--disable-gpu"])
            try:
                tab = browser.new_page()
                t0 = time.monotonic()
                tab.goto(f"http://127.0.0.1:{port}/")
                tab.wait_for_function(f"document.querySelectorAll('.card').length >= {want}",
                                      timeout=60_000)
                shown = time.monotonic() - t0
                lags = tab.evaluate(LAG_PROBE)
            finally:
                browser.close()
    finally:
        parent.kill()
        parent.wait()
    return {"page_cards": want, "page_all_cards_s": round(shown, 2),
            "page_lag_ms_p50": round(pct(lags, 50), 1),
            "page_lag_ms_p99": round(pct(lags, 99), 1),
            "page_lag_ms_max": round(max(lags), 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", nargs="?", default="driver",
                        choices=["driver", "remotes", "parent"])
    parser.add_argument("--remotes", type=int, default=20)
    parser.add_argument("--components", type=int, default=50)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--interval", type=float, default=INTERVAL)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--ports", default="[]")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false")
    parser.add_argument("--page", action="store_true",
                        help="also open the parent's dashboard in Chromium")
    args = parser.parse_args()
    if args.mode == "remotes":
        trio.run(run_remotes, args.remotes, args.components, args.interval)
        return
    if args.mode == "parent":
        trio.run(run_parent, json.loads(args.ports), args.interval, args.seconds)
        return
    rows = []
    if args.baseline:
        rows.append(measure([], args))
    remotes = spawn(["remotes", "--remotes", str(args.remotes), "--components",
                     str(args.components), "--interval", str(args.interval)])
    try:
        assert remotes.stdout is not None
        ports = json.loads(remotes.stdout.readline())
        rows.append(measure(ports, args))
        if args.page:
            rows.append(page(ports, args))
    finally:
        remotes.kill()
        remotes.wait()
    print(f"# {os.cpu_count()} CPUs; interval {args.interval} s; {args.clients} clients "
          f"on the parent; {args.seconds:g} s after {args.warmup:g} s of warm-up")
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
