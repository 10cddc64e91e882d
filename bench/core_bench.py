"""Supervisor core figures: restart latency, per-tick cost, idle overhead.

    python bench/core_bench.py restart [--runs 20] [--cgroups]
    python bench/core_bench.py tick [--components 200] [--ticks 20]
    python bench/core_bench.py idle [--components 50] [--seconds 60]
    python bench/core_bench.py crashloop [--seconds 10]
    python bench/core_bench.py scale [--components 1000] [--seconds 30]

`tick` and `scale` take `--instances`: then the config is one component with
`instances = N` (N = --components) instead of N components, and `scale`
also times a run-time scale to 0 and back to N (POST .../scale).

Every run is bounded in count and time, spawns only its own children and
ends them before it returns.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.app import freeze_startup_objects  # noqa: E402
from core.config import load  # noqa: E402
from core.containment import Containment  # noqa: E402
from core.plugins import PluginManager  # noqa: E402
from core.states import ComponentState  # noqa: E402
from core.supervisor import Supervisor  # noqa: E402

PY = sys.executable
# The program itself, not an interpreter: 1,000 Pythons would need 10 GB.
SLEEPER = json.dumps([shutil.which("sleep") or "/bin/sleep", "3600"])
LISTENER = """
import socket, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(4096)
print(s.getsockname()[1], flush=True)
deadline = time.monotonic() + 600
while time.monotonic() < deadline:
    s.accept()[0].close()
"""


def write_config(directory: Path, components: int, *, interval: float, extra: str = "",
                 instances: bool = False) -> Path:
    body = [f"[server]\nport = 0\ninterval = {interval}\n"]
    if instances:  # one table, `components` processes
        body.append(f'[components.c]\nplugin = "process"\ncommand = {SLEEPER}\n'
                    f"instances = {components}\n{extra}")
    for i in range(0 if instances else components):
        body.append(f'[components.c{i:03d}]\nplugin = "process"\ncommand = {SLEEPER}\n{extra}')
    path = directory / "config.toml"
    path.write_text("\n".join(body))
    return path


def load_config(path: Path):
    plugins = PluginManager()
    return load(path, plugins=plugins.names, validate=plugins.validate), plugins


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


async def _restart(runs: int, directory: Path, containment: Containment | None = None,
                   program: bytes | None = None) -> list[float]:
    cfg, plugins = load_config(write_config(directory, 1, interval=2.0,
                                            extra="stable_after = 0.0\n"))
    sup = Supervisor(cfg, plugins, containment=containment)
    running_at: list[float] = []
    new_running = trio.Event()

    def listener(cid: str, old: ComponentState, new: ComponentState) -> None:
        nonlocal new_running
        if new == ComponentState.RUNNING:
            running_at.append(time.perf_counter())
            new_running.set()

    sup.add_listener(listener)
    latencies: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        with trio.fail_after(10):
            while sup.view("c000")["pid"] is None:
                await new_running.wait()
        freeze_startup_objects()  # as python -m core does once it runs
        for _ in range(runs):
            await trio.sleep(0.2)  # healthy, past stable_after
            pid = sup.view("c000")["pid"]
            new_running = trio.Event()
            killed = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            with trio.fail_after(10):
                await new_running.wait()
            new_pid = sup.view("c000")["pid"]
            assert new_pid not in (None, pid) and psutil.pid_exists(new_pid)
            if program is not None:
                # Until the program itself runs (the wrapper's exec done): what
                # an outside observer sees; RUNNING comes when Popen returns.
                with trio.fail_after(10):
                    while _cmdline(new_pid) != program:
                        await trio.sleep(0.0002)
                latencies.append((time.perf_counter() - killed) * 1000)
                continue
            latencies.append((running_at[-1] - killed) * 1000)
        await sup.shutdown()
        nursery.cancel_scope.cancel()
    return latencies


def _restart_both(runs: int, directory: Path) -> dict[str, list[float]]:
    """Restart latency with and without a cgroup per component, in alternating rounds:
    from the kill until the new process runs the program."""
    out: dict[str, list[float]] = {"process-group": [], "cgroup": []}
    for round_ in range(4):
        for kind in out:
            containment = None
            if kind == "cgroup":
                containment = Containment.open(f"bench-{os.getpid()}", enabled=True)
                if containment.tree is None:
                    raise SystemExit(f"cgroups cannot be made here: {containment.reason}")
            here = directory / f"{kind}-{round_}"
            here.mkdir()
            program = b"\0".join(x.encode() for x in json.loads(SLEEPER)) + b"\0"
            out[kind] += trio.run(_restart, max(1, runs // 4), here, containment, program)
    return out


class StepTimer(trio.abc.Instrument):
    """Longest single task step: how long the event loop was blocked at once."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.longest_cpu = 0.0  # CPU time of the loop thread in that same step
        self.where = ""
        self._began: float | None = None
        self._began_cpu = 0.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._began = time.perf_counter()
        self._began_cpu = time.thread_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._began is not None:  # None for the step that added the instrument
            took = time.perf_counter() - self._began
            if took > self.longest:
                self.longest, self.where = took, task.name
                self.longest_cpu = time.thread_time() - self._began_cpu
        self._began = None


async def _tick(components: int, ticks: int, directory: Path,
                health: bool, instances: bool = False, cgroups: bool = False
                ) -> dict[str, float]:
    # The health-check target runs in its own process, so that accepting 200
    # connections a tick loads neither this event loop nor its GIL.
    target = subprocess.Popen([PY, "-c", LISTENER], stdout=subprocess.PIPE, text=True)
    assert target.stdout is not None
    port = int(target.stdout.readline())
    # With --health every component has a TCP health check, so every tick
    # runs 200 probe hooks in worker threads, each connecting to a listener.
    extra = f'health_tcp = "127.0.0.1:{port}"\n' if health else ""
    cfg, plugins = load_config(write_config(directory, components, interval=3600, extra=extra,
                                            instances=instances))
    containment = None
    if cgroups:
        containment = Containment.open(f"bench-{os.getpid()}", enabled=True)
        if containment.tree is None:
            raise SystemExit(f"cgroups cannot be made here: {containment.reason}")
    sup = Supervisor(cfg, plugins, containment=containment)
    timer = StepTimer()
    walls: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        with trio.fail_after(60):
            while any(sup.view(c)["health"] != "healthy" for c in sup.component_ids()):
                await trio.sleep(0.1)
        await sup.tick()  # warm the psutil cache
        freeze_startup_objects()  # as python -m core does once it runs
        trio.lowlevel.add_instrument(timer)
        encodes: list[float] = []
        for _ in range(ticks):
            began = time.perf_counter()
            doc = await sup.tick()
            walls.append((time.perf_counter() - began) * 1000)
            assert len(doc["components"]) == components
            began = time.perf_counter()
            size = len(json.dumps(doc))
            encodes.append((time.perf_counter() - began) * 1000)
            await trio.sleep(0.05)
        trio.lowlevel.remove_instrument(timer)
        await sup.shutdown()
        nursery.cancel_scope.cancel()
    target.kill()
    target.communicate()
    return {"median_ms": statistics.median(walls), "max_ms": max(walls),
            "longest_step_ms": timer.longest * 1000, "where": timer.where,
            "longest_step_cpu_ms": timer.longest_cpu * 1000,
            "snapshot_kb": size / 1024, "encode_ms": statistics.median(encodes)}


def _idle(components: int, seconds: float, directory: Path) -> dict[str, float]:
    path = write_config(directory, components, interval=2.0)
    text = path.read_text().replace("port = 0", f"port = {_free_port()}")
    path.write_text(text)
    proc = subprocess.Popen([PY, "-m", "core", "--config", str(path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sup = psutil.Process(proc.pid)
        deadline = time.monotonic() + 60
        while len(sup.children()) < components and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # let start-up settle
        cpu0 = sum(sup.cpu_times()[:2])
        rss_start = sup.memory_info().rss
        t0 = time.monotonic()
        time.sleep(seconds)
        cpu = sum(sup.cpu_times()[:2]) - cpu0
        wall = time.monotonic() - t0
        rss_end = sup.memory_info().rss
        return {"cpu_percent_of_one_core": 100 * cpu / wall,
                "rss_start_mb": rss_start / 2**20, "rss_end_mb": rss_end / 2**20,
                "children": len(sup.children())}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _crashloop(seconds: float, directory: Path) -> dict[str, float]:
    """The supervisor's CPU while one child exits at once, forever, backing off
    0.05 s doubling to 0.4 s, with snapshots every 0.25 s (the fault test's setup)."""
    body = (f"[server]\nport = {_free_port()}\ninterval = 0.25\n"
            f'[components.crashy]\nplugin = "process"\n'
            f'command = ["{PY}", "-c", "import sys; sys.exit(3)"]\nbackoff_initial = 0.05\n'
            f"backoff_factor = 2.0\nbackoff_max = 0.4\nmax_failures = 1000\n"
            f'[components.steady]\nplugin = "process"\ncommand = {SLEEPER}\n')
    path = directory / "config.toml"
    path.write_text(body)
    proc = subprocess.Popen([PY, "-m", "core", "--config", str(path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sup = psutil.Process(proc.pid)
        time.sleep(3)  # start-up, and the backoff reaches its maximum
        cpu0, t0 = sum(sup.cpu_times()[:2]), time.monotonic()
        time.sleep(seconds)
        cpu, wall = sum(sup.cpu_times()[:2]) - cpu0, time.monotonic() - t0
        return {"cpu_percent_of_one_core": 100 * cpu / wall}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _scale(components: int, seconds: float, directory: Path,
           instances: bool = False) -> dict[str, float]:
    """python -m core with `components` sleepers: start-up, status, idle, RSS."""
    port = _free_port()
    path = write_config(directory, components, interval=2.0, instances=instances)
    path.write_text(path.read_text().replace("port = 0", f"port = {port}"))
    began = time.monotonic()
    proc = subprocess.Popen([PY, "-m", "core", "--config", str(path)], cwd=directory,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sup = psutil.Process(proc.pid)
        deadline = began + 120

        def status() -> tuple[float, bytes]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            t0 = time.perf_counter()
            conn.request("GET", "/api/status")
            body = conn.getresponse().read()
            took = (time.perf_counter() - t0) * 1000
            conn.close()
            return took, body

        running = 0
        while time.monotonic() < deadline:
            try:
                doc = json.loads(status()[1])
            except (OSError, ValueError, http.client.HTTPException):
                time.sleep(0.1)
                continue
            running = sum(c["state"] == "running" for c in doc["components"].values())
            if running == components:
                break
            time.sleep(0.1)
        all_running = time.monotonic() - began
        time.sleep(3)
        cpu0, t0 = sum(sup.cpu_times()[:2]), time.monotonic()
        time.sleep(seconds)
        cpu, wall = sum(sup.cpu_times()[:2]) - cpu0, time.monotonic() - t0
        took = [status() for _ in range(20)]
        rss = sup.memory_info().rss / 2**20
        rescale = _rescale(port, components, status) if instances else {}
        return {**rescale, "all_running_s": all_running, "running": running,
                "idle_cpu": 100 * cpu / wall, "rss_mb": rss,
                "status_p50_ms": statistics.median(t for t, _ in took),
                "snapshot_kb": len(took[-1][1]) / 1024}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _rescale(port: int, components: int, status) -> dict[str, float]:
    """Seconds for POST /api/components/c/scale to 0 (answered once all are gone),
    then to `components` until every one runs again."""
    def post(n: int) -> float:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        t0 = time.monotonic()
        conn.request("POST", "/api/components/c/scale", body=json.dumps({"instances": n}),
                     headers={"Content-Type": "application/json"})
        answer = conn.getresponse()
        answer.read()
        conn.close()
        assert answer.status == 200, answer.status
        return t0

    t0 = post(0)
    down = time.monotonic() - t0
    t0 = post(components)
    deadline = t0 + 120
    while time.monotonic() < deadline:
        doc = json.loads(status()[1])
        if sum(c["state"] == "running" for c in doc["components"].values()) == components:
            break
        time.sleep(0.1)
    return {"scale_down_s": down, "scale_up_s": time.monotonic() - t0}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("restart")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--cgroups", action="store_true",
                   help="with and without a cgroup per component, side by side")
    p = sub.add_parser("tick")
    p.add_argument("--components", type=int, default=200)
    p.add_argument("--ticks", type=int, default=20)
    p.add_argument("--health", action="store_true",
                   help="give every component a TCP health check (probe hook per tick)")
    p.add_argument("--instances", action="store_true",
                   help="one component with instances = --components")
    p.add_argument("--cgroups", action="store_true", help="a cgroup per component")
    p = sub.add_parser("idle")
    p.add_argument("--components", type=int, default=50)
    p.add_argument("--seconds", type=float, default=60)
    p = sub.add_parser("scale")
    p.add_argument("--components", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--instances", action="store_true",
                   help="one component with instances = --components; also time a scale")
    p = sub.add_parser("crashloop")
    p.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        if args.what == "restart" and args.cgroups:
            both = _restart_both(args.runs, directory)
            for kind, lat in both.items():
                print(f"restart latency, {kind} containment, over {len(lat)} kill -9s: "
                      f"median {statistics.median(lat):.2f} ms, p90 "
                      f"{statistics.quantiles(lat, n=10)[-1]:.2f} ms, max {max(lat):.2f} ms")
            ratio = statistics.median(both["cgroup"]) / statistics.median(both["process-group"])
            print(f"median, cgroup / process-group: {ratio:.2f}")
        elif args.what == "restart":
            lat = trio.run(_restart, args.runs, directory)
            print(f"restart latency over {len(lat)} kill -9s: median "
                  f"{statistics.median(lat):.2f} ms, max {max(lat):.2f} ms, "
                  f"min {min(lat):.2f} ms")
        elif args.what == "tick":
            r = trio.run(_tick, args.components, args.ticks, directory, args.health,
                         args.instances, args.cgroups)
            kind = "with TCP health checks" if args.health else "without health checks"
            kind += ", a cgroup each" if args.cgroups else ""
            what = "instances of one component" if args.instances else "components"
            print(f"tick with {args.components} {what} {kind}, {args.ticks} ticks: "
                  f"median {r['median_ms']:.1f} ms, max {r['max_ms']:.1f} ms wall; longest "
                  f"event-loop step {r['longest_step_ms']:.2f} ms ({r['where']}; of which "
                  f"{r['longest_step_cpu_ms']:.2f} ms on the CPU); snapshot "
                  f"{r['snapshot_kb']:.0f} KB, json.dumps {r['encode_ms']:.1f} ms")
        elif args.what == "scale":
            r = _scale(args.components, args.seconds, directory, args.instances)
            what = "instances of one component" if args.instances else "components"
            print(f"{args.components} {what}: {r['running']} running "
                  f"{r['all_running_s']:.1f} s after start; idle CPU {r['idle_cpu']:.2f} % "
                  f"of one core over {args.seconds:g} s; RSS {r['rss_mb']:.0f} MB; "
                  f"GET /api/status p50 {r['status_p50_ms']:.1f} ms "
                  f"({r['snapshot_kb']:.0f} KB)")
            if args.instances:
                print(f"run-time scale to 0: answered in {r['scale_down_s']:.1f} s (all "
                      f"gone); back to {args.components}: all running after "
                      f"{r['scale_up_s']:.1f} s")
        elif args.what == "crashloop":
            r = _crashloop(args.seconds, directory)
            print(f"crash loop (a restart every 0.4 s, snapshots every 0.25 s) for "
                  f"{args.seconds:g} s: supervisor CPU {r['cpu_percent_of_one_core']:.2f} % "
                  "of one core")
        else:
            r = _idle(args.components, args.seconds, directory)
            print(f"idle with {args.components} components for {args.seconds:g} s: supervisor "
                  f"CPU {r['cpu_percent_of_one_core']:.2f} % of one core, RSS "
                  f"{r['rss_start_mb']:.1f} -> {r['rss_end_mb']:.1f} MB, "
                  f"{r['children']} children")


if __name__ == "__main__":
    main()
