"""Health changes in the component's log; the HEALTH column; POST .../stop?wait=true."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from core import Launch, Probe, hookimpl
from core.config import load
from core.hub import Hub
from core.plugins import PluginManager
from core.supervisor import Supervisor
from core.web import serve

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
# Takes 1 s to exit after SIGTERM, so a stop is visibly "stopping" first.
SLOW_EXIT = ("import signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1.0), sys.exit(0)))\n"
             "print('up', flush=True)\n"
             "while True: time.sleep(0.05)\n")


class FlagPlugin:
    """Healthy while the flag file says "ok"; otherwise unhealthy with its content as reason."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    @hookimpl
    def start(self, component):
        return Launch(argv=(sys.executable, "-c", SLOW_EXIT))

    @hookimpl
    def probe(self, component, pid):
        text = self.flag.read_text().strip()
        return Probe() if text == "ok" else Probe(healthy=False, error=text)


async def cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CONTROL_CENTER_TOKEN"}
    with trio.fail_after(30):
        return await trio.run_process([sys.executable, "-m", "core", *args], cwd=ROOT, env=env,
                                      capture_stdout=True, capture_stderr=True, check=False)


async def test_health_changes_stop_wait_and_the_health_column(tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    flag.write_text("ok")
    plugins = PluginManager(load_entry_points=False, extra={"flag": FlagPlugin(flag)})
    path = tmp_path / "config.toml"
    path.write_text("[server]\nport = 0\ninterval = 0.1\n"
                    '[components.svc]\nplugin = "flag"\nstop_timeout = 8\n')
    config = load(path, plugins=plugins.names, validate=plugins.validate)
    hub = Hub(interval=config.server.interval, history_seconds=60)
    sup = Supervisor(config, plugins, hub)
    shutdown = trio.Event()

    async def until(pred, what: str, timeout: float = 10.0) -> None:
        with trio.fail_after(timeout):
            while not pred():
                await trio.sleep(0.02)

    def notes() -> list[str]:
        return [ln.text for ln in sup.log("svc").tail(1000) if ln.text.startswith("health:")]

    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve, sup, hub, config.server, shutdown=shutdown))
        await nursery.start(sup.run)
        url = f"http://127.0.0.1:{port}"
        try:
            await until(lambda: sup.view("svc")["health"] == "healthy", "healthy")
            flag.write_text("disk full")
            await until(lambda: sup.view("svc")["health"] == "unhealthy", "unhealthy")
            status = await cli("status", "--url", url)
            flag.write_text("ok")
            await until(lambda: sup.view("svc")["health"] == "healthy", "healthy again")
            for _ in range(5):  # more probes: no more lines
                await sup.tick()
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                bad = await http.post("/api/components/svc/stop?wait=maybe")
                quick = (await http.post("/api/components/svc/stop")).json()["component"]
                await sup.start("svc")
                await until(lambda: sup.view("svc")["health"] == "healthy", "healthy")
                waited = (await http.post("/api/components/svc/stop?wait=true")
                          ).json()["component"]
                await sup.start("svc")
                await until(lambda: sup.view("svc")["health"] == "healthy", "healthy")
                cli_stop = await cli("stop", "svc", "--url", url)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(15):
                await sup.shutdown()
                shutdown.set()
            nursery.cancel_scope.cancel()
    assert notes() == ["health: starting -> healthy",
                       "health: healthy -> unhealthy: disk full",
                       "health: unhealthy -> healthy"] + ["health: starting -> healthy"] * 2
    lines = status.stdout.decode().splitlines()
    assert lines[0].split()[:4] == ["ID", "NAME", "STATE", "HEALTH"]
    assert lines[1].split()[:4] == ["svc", "svc", "running", "unhealthy"]
    assert "disk full" in lines[1]
    assert bad.status_code == 400
    assert bad.json()["error"] == "wait: expected true or false, got 'maybe'"
    assert quick["state"] == "stopping"
    assert waited["state"] == "stopped" and waited["pid"] is None
    assert cli_stop.returncode == 0 and cli_stop.stdout.decode() == "svc: stopped\n", (
        cli_stop.stdout, cli_stop.stderr)


class GatedProbe:
    """A component whose probe hook waits for `gate`, counting its calls."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls = 0

    @hookimpl
    def start(self, component):
        return Launch(argv=("sleep", "60"))

    @hookimpl
    def probe(self, component, pid):
        self.calls += 1
        self.gate.wait(10)
        return Probe()


async def test_a_probe_scheduled_while_another_runs_is_not_run(tmp_path: Path) -> None:
    # The tick schedules a probe a step before it starts; the start-up probes
    # can take the component meanwhile. Both would log "starting -> healthy".
    gated = GatedProbe()
    plugins = PluginManager(load_entry_points=False, extra={"gated": gated})
    path = tmp_path / "config.toml"
    path.write_text("[server]\nport = 0\ninterval = 3600\n"
                    '[components.svc]\nplugin = "gated"\n')
    config = load(path, plugins=plugins.names, validate=plugins.validate)
    sup = Supervisor(config, plugins)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        comp = sup._components["svc"]
        with trio.fail_after(10):
            while gated.calls < 1:  # the start-up probe, waiting at the gate
                await trio.sleep(0.01)
        second = trio.Event()
        nursery.start_soon(sup._runner.probe, comp, second)
        with trio.fail_after(10):
            await second.wait()  # at once: the first one holds the component
        gated.gate.set()
        with trio.fail_after(10):
            while sup.view("svc")["health"] != "healthy":
                await trio.sleep(0.01)
        await sup.shutdown()
        nursery.cancel_scope.cancel()
    assert gated.calls == 1
    notes = [ln.text for ln in sup.log("svc").tail(100) if ln.text.startswith("health:")]
    assert notes == ["health: starting -> healthy"]
