"""Docker plugin figures: start to serving, restart after kill, the probe's cost.

    python bench/docker_bench.py [--runs 10] [--containers 20] [--passes 10] [--interval 2]

Needs a live engine (DOCKER_HOST or the local socket; .ci/run starts one)
and a static busybox (the image is made with `docker import`, as in the
tests). Side by side in one run:

- start: `POST /api/components/web/start` of a docker component running
  busybox httpd (host network, 127.0.0.1) until its state is running (REST,
  polled) and until the httpd answers; beside it, the same httpd as a `process` component on the
  host, and the bare SDK (create + start, no supervisor) as the engine's floor.
- restart: SIGKILL of the container (`docker kill`) until the httpd answers
  again from a new one, after a stable run (the core restarts at once); beside
  it, SIGKILL of the host httpd of the `process` component.
- probe: the plugin's probe hook over N running containers, a pass every
  interval, one by one and 16 at a time as the core runs them: wall time per
  probe (one inspect; the stats fetch it starts runs beside it), and CPU per
  probe in this process and in dockerd + containerd, over what they use
  with the same containers unprobed.

Every loop is bounded in count and time; the supervisors and containers it
starts are ended (by pid, by label) before it returns.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import ComponentInfo  # noqa: E402
from plugins import docker as docker_plugin  # noqa: E402
from plugins.docker.options import read_options  # noqa: E402
from tests.plugins.docker_engine import busybox_tarball  # noqa: E402

LABEL = "cc-bench"
TOKEN = uuid.uuid4().hex[:12]
POLL = 0.002
LIMIT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return s.recv(12).startswith(b"HTTP/1.")
    except OSError:
        return False


def until(pred: Callable[[], bool], what: str, limit: float = LIMIT) -> float:
    began = time.perf_counter()
    while not pred():
        if time.perf_counter() - began > limit:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(POLL)
    return time.perf_counter() - began


def image(client: docker.DockerClient) -> str:
    busybox = Path("/bin/busybox")
    name = "cc-bench-busybox:1"
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.get(name)
        return name
    client.api.import_image_from_data(busybox_tarball(busybox), repository="cc-bench-busybox",
                                      tag="1")
    return name


def httpd(port: int) -> list[str]:
    return ["sh", "-c", f"trap 'exit 0' TERM; httpd -f -p 127.0.0.1:{port} -h /www & wait"]


def toml(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return repr(value)


class Core:
    """One `python -m core` on a temp config; REST on its announced port."""

    def __init__(self, base: Path, tables: str) -> None:
        base.mkdir(parents=True)
        self.config = base / "config.toml"
        self.config.write_text('[server]\nport = 0\ninterval = 1.0\ndata_dir = "data"\n'
                               f'log_dir = "logs"\ncontrol_rate = 10000.0\n\n{tables}')
        self.out = base / "out.txt"
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "core", "--config",
                                          str(self.config)], cwd=ROOT, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        until(lambda: "dashboard: http://127.0.0.1:" in self.out.read_text(), "the port")
        port = self.out.read_text().split("dashboard: http://127.0.0.1:")[1].split("/")[0]
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def comp(self, cid: str) -> dict[str, Any]:
        return self.http.get(f"/api/components/{cid}").json()

    def post(self, cid: str, action: str) -> dict[str, Any]:
        return self.http.post(f"/api/components/{cid}/{action}").json()

    def close(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def summary(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return (f"p50 {statistics.median(ms):7.1f} ms   p99 {p99:7.1f} ms   "
            f"min {ms[0]:6.1f} ms   (n={len(ms)})")


def bench_lifecycle(client: docker.DockerClient, img: str, runs: int, tmp: Path) -> None:
    dport, pport, bport = free_port(), free_port(), free_port()
    host_httpd = ["/bin/busybox", "httpd", "-f", "-p", f"127.0.0.1:{pport}", "-h", str(tmp)]
    tables = (f'[components.web]\nplugin = "docker"\nimage = {toml(img)}\n'
              f"command = {toml(httpd(dport))}\nautostart = false\nstable_after = 0.5\n"
              f'labels = {{ {LABEL} = "{TOKEN}" }}\n\n'
              f'[components.host]\nplugin = "process"\nautostart = false\nstable_after = 0.5\n'
              f"command = {toml(host_httpd)}\n")
    core = Core(tmp / "core", tables)
    try:
        starts: dict[str, list[float]] = {"docker: state running": [],
                                          "docker: httpd answers": [],
                                          "process: httpd answers": [],
                                          "bare SDK create+start: httpd answers": []}
        for _ in range(runs):
            for cid, port, key in (("web", dport, "docker"), ("host", pport, "process")):
                began = time.perf_counter()
                core.post(cid, "start")
                if key == "docker":
                    until(lambda c=cid: core.comp(c)["state"] == "running", "running")
                    starts["docker: state running"].append(time.perf_counter() - began)
                until(lambda p=port: answers(p), f"{cid} serving")
                starts[f"{key}: httpd answers"].append(time.perf_counter() - began)
                core.post(cid, "stop")
                until(lambda p=port: not answers(p), f"{cid} stopped")
            began = time.perf_counter()
            made = client.api.create_container(img, command=httpd(bport), labels={LABEL: TOKEN},
                                               host_config=client.api.create_host_config(
                                                   network_mode="host"))
            client.api.start(made["Id"])
            until(lambda: answers(bport), "bare container serving")
            starts["bare SDK create+start: httpd answers"].append(time.perf_counter() - began)
            client.api.remove_container(made["Id"], force=True)
        print(f"start to serving, {runs} runs each, alternating:")
        for name, values in starts.items():
            print(f"  {name:40s} {summary(values)}")

        restarts: dict[str, list[float]] = {"docker: docker kill -> httpd answers": [],
                                            "process: kill -9 -> httpd answers": []}
        for cid in ("web", "host"):
            core.post(cid, "start")
        until(lambda: answers(dport) and answers(pport), "both serving")
        for _ in range(runs):
            time.sleep(0.6)  # a stable run: the core restarts at once, no backoff
            found = client.api.containers(filters={"label": ["control-center.component=web",
                                                             f"{LABEL}={TOKEN}"]})
            assert len(found) == 1, found
            began = time.perf_counter()
            client.api.kill(found[0]["Id"])
            until(lambda: not answers(dport), "the killed httpd to stop answering", 5)
            until(lambda: answers(dport), "a new container serving")
            restarts["docker: docker kill -> httpd answers"].append(time.perf_counter() - began)
            time.sleep(0.6)
            pid = core.comp("host")["pid"]
            began = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            until(lambda: not answers(pport), "the killed host httpd to stop answering", 5)
            until(lambda: answers(pport), "a new host httpd serving")
            restarts["process: kill -9 -> httpd answers"].append(time.perf_counter() - began)
        print(f"restart after kill, {runs} runs each, alternating:")
        for name, values in restarts.items():
            print(f"  {name:40s} {summary(values)}")
        print(f"  restarts counted by the core: web {core.comp('web')['restarts']}, "
              f"host {core.comp('host')['restarts']}")
    finally:
        core.close()


def engine_pids() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name"])
            if p.info["name"] in ("dockerd", "containerd")]


def cpu_of(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def bench_probe(img: str, containers: int, passes: int, interval: float, tmp: Path) -> None:
    infos = []
    for i in range(containers):
        options = read_options({"image": img, "command": ["sleep", "600"],
                                "labels": {LABEL: TOKEN}})
        info = ComponentInfo(id=f"p{i:02d}", name=f"p{i:02d}", plugin="docker",
                             options=options, data_dir=tmp / "data" / f"p{i:02d}",
                             config_dir=tmp, stop_timeout=2.0)
        docker_plugin.start(info)
        infos.append(info)
    engine = engine_pids()
    try:
        time.sleep(2 * interval)  # the first samples are in
        # What the engine and this process cost with the containers running, unprobed.
        cpu0, eng0 = time.process_time(), cpu_of(engine)
        time.sleep(passes * interval)
        base_cpu, base_eng = time.process_time() - cpu0, cpu_of(engine) - eng0
        calls = containers * passes
        print(f"probe, {containers} running containers, {passes} passes {interval:g} s apart "
              f"(as the core's tick; each probe then starts one stats fetch):")
        print(f"  unprobed for {passes * interval:g} s: dockerd+containerd "
              f"{base_eng / (passes * interval) * 100:.1f} % of a CPU")
        for threads in (1, 16):
            walls: list[float] = []
            pass_walls: list[float] = []

            def one(info: ComponentInfo, walls: list[float] = walls) -> None:
                began = time.perf_counter()
                result = docker_plugin.probe(info, 0)
                walls.append(time.perf_counter() - began)
                assert result.healthy and "memory_mb" in result.metrics, result

            cpu0, eng0 = time.process_time(), cpu_of(engine)
            next_at = time.monotonic()
            with ThreadPoolExecutor(threads) as pool:
                for _ in range(passes):
                    time.sleep(max(0.0, next_at - time.monotonic()))
                    next_at += interval
                    began = time.perf_counter()
                    list(pool.map(one, infos))
                    pass_walls.append(time.perf_counter() - began)
                time.sleep(max(0.0, next_at - time.monotonic()))  # the last fetches end
            cpu = time.process_time() - cpu0 - base_cpu
            eng = cpu_of(engine) - eng0 - base_eng
            print(f"  {threads:2d} thread(s): per probe wall       {summary(walls)}")
            print(f"              per pass of {containers} wall  {summary(pass_walls)}")
            print(f"              CPU per probe, over the unprobed run: this process "
                  f"{cpu / calls * 1000:.2f} ms, dockerd+containerd {eng / calls * 1000:.2f} ms")
    finally:
        client = docker.from_env()
        for item in client.api.containers(all=True, filters={"label": f"{LABEL}={TOKEN}"}):
            client.api.remove_container(item["Id"], force=True)
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--containers", type=int, default=20)
    parser.add_argument("--passes", type=int, default=10)
    parser.add_argument("--interval", type=float, default=2.0)
    args = parser.parse_args()
    client = docker.from_env()
    version = client.version()
    print(f"engine {version['Version']} (API {version['ApiVersion']}), {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    img = image(client)
    with tempfile.TemporaryDirectory(prefix="cc-docker-bench-") as tmp:
        try:
            bench_lifecycle(client, img, args.runs, Path(tmp))
            bench_probe(img, args.containers, args.passes, args.interval, Path(tmp))
        finally:
            for item in client.api.containers(all=True,
                                              filters={"label": f"{LABEL}={TOKEN}"}):
                client.api.remove_container(item["Id"], force=True)
            client.close()


if __name__ == "__main__":
    main()
