"""The supervisor with real child processes: lifecycle, policy, dependencies, plugins."""

from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from core import Launch, Probe, hookimpl
from core.hub import Hub
from core.states import ComponentState as S
from core.supervisor import Supervisor

from .conftest import PY, alive, make_config, make_plugins, sleeper

pytestmark = pytest.mark.anyio


class Recorder:
    """Records every state transition, per component, in order."""

    def __init__(self, sup: Supervisor) -> None:
        self.seen: dict[str, list[str]] = {}
        self.times: dict[str, list[tuple[str, float]]] = {}
        sup.add_listener(self)

    def __call__(self, cid: str, old: S, new: S) -> None:
        self.seen.setdefault(cid, [old.value]).append(new.value)
        self.times.setdefault(cid, []).append((new.value, trio.current_time()))


async def wait_for(pred, timeout: float = 10.0, step: float = 0.02) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(step)


async def test_start_stop_sequence(tmp_path: Path, plugins) -> None:
    cfg = make_config(tmp_path, f'[components.a]\nplugin = "process"\ncommand = {sleeper()}\n',
                      plugins)
    sup = Supervisor(cfg, plugins)
    rec = Recorder(sup)
    async with trio.open_nursery() as n:
        await n.start(sup.run)
        await wait_for(lambda: sup.view("a")["health"] == "healthy")
        view = sup.view("a")
        pid = view["pid"]
        assert alive(pid)
        assert view["health"] == "healthy"
        assert view["restarts"] == 0
        await sup.stop("a")
        await wait_for(lambda: sup.view("a")["state"] == "stopped")
        assert not alive(pid)
        assert sup.view("a")["pid"] is None
        # stop of a stopped component is a no-op
        assert (await sup.stop("a"))["state"] == "stopped"
        await sup.start("a")
        await wait_for(lambda: sup.view("a")["state"] == "running")
        await sup.shutdown()
        n.cancel_scope.cancel()
    assert rec.seen["a"] == ["stopped", "starting", "running", "stopping", "stopped",
                             "starting", "running", "stopping", "stopped"]


async def test_concurrent_starts_spawn_one_process(tmp_path: Path, plugins) -> None:
    cfg = make_config(tmp_path, '[components.a]\nplugin = "process"\nautostart = false\n'
                                f"command = {sleeper()}\n", plugins)
    sup = Supervisor(cfg, plugins)
    rec = Recorder(sup)
    async with trio.open_nursery() as n:
        await n.start(sup.run)
        async with trio.open_nursery() as burst:
            for _ in range(20):
                burst.start_soon(sup.start, "a")
                burst.start_soon(sup.restart, "a")
        await wait_for(lambda: sup.view("a")["state"] == "running")
        pid = sup.view("a")["pid"]
        children = [p for p in __import__("psutil").Process().children()
                    if p.pid != pid and p.is_running() and "time.sleep(60)" in " ".join(
                        p.cmdline())]
        assert children == []
        await sup.shutdown()
        n.cancel_scope.cancel()
    # Never two RUNNING without a stop in between.
    states = rec.seen["a"]
    for prev, nxt in itertools.pairwise(states):
        assert not (prev == "running" and nxt == "running")


def test_backoff_and_give_up(tmp_path: Path, plugins) -> None:
    # On trio's fake clock the delays are exact and the test takes no real time.
    cfg = make_config(tmp_path, f'[components.crash]\nplugin = "process"\n'
                                f'command = ["{PY}", "-c", "raise SystemExit(1)"]\n'
                                "backoff_initial = 10\nbackoff_factor = 3\nbackoff_max = 100\n"
                                "max_failures = 5\nstable_after = 3600\n",
                      plugins, interval=3600)
    delays: list[float] = []
    views: list[dict] = []

    async def main() -> None:
        sup = Supervisor(cfg, plugins)
        rec = Recorder(sup)
        async with trio.open_nursery() as n:
            await n.start(sup.run)
            while sup.view("crash")["state"] != "error":
                await trio.sleep(1)
            n.cancel_scope.cancel()
        # From each death (RUNNING -> STARTING) to the next spawn (-> RUNNING).
        seq = rec.times["crash"][1:]
        delays.extend(round(b[1] - a[1], 1) for a, b in itertools.pairwise(seq)
                      if a[0] == "starting" and b[0] == "running")
        views.append(sup.view("crash"))

    began = time.monotonic()
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0.01))
    # 10, x3 each time, capped at 100; the fifth quick failure gives up.
    assert delays == [10, 30, 90, 100]
    assert time.monotonic() - began < 20
    view = views[0]
    assert "gave up after 5 quick failures" in view["error"]
    assert "exited with status 1" in view["error"]
    assert "start it again" in view["error"]
    assert view["exit_code"] == 1
    assert view["restarts"] == 4


async def test_crash_after_stable_run_restarts_at_once(tmp_path: Path, plugins) -> None:
    cfg = make_config(tmp_path, f'[components.a]\nplugin = "process"\ncommand = {sleeper()}\n'
                                "stable_after = 0.2\nbackoff_initial = 30\n", plugins)
    sup = Supervisor(cfg, plugins)
    async with trio.open_nursery() as n:
        await n.start(sup.run)
        await wait_for(lambda: sup.view("a")["state"] == "running")
        pid = sup.view("a")["pid"]
        await trio.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        began = time.monotonic()
        await wait_for(lambda: sup.view("a")["pid"] not in (None, pid))
        assert time.monotonic() - began < 1.0
        view = sup.view("a")
        assert view["restarts"] == 1
        assert view["state"] == "running"
        await sup.shutdown()
        n.cancel_scope.cancel()


async def test_restart_policy_never_and_clean_exit(tmp_path: Path, plugins) -> None:
    body = (f'[components.clean]\nplugin = "process"\ncommand = ["{PY}", "-c", "pass"]\n'
            f'[components.fails]\nplugin = "process"\nrestart = "never"\n'
            f'command = ["{PY}", "-c", "raise SystemExit(7)"]\n')
    sup = Supervisor(make_config(tmp_path, body, plugins), plugins)
    async with trio.open_nursery() as n:
        await n.start(sup.run)
        await wait_for(lambda: sup.view("clean")["state"] == "stopped"
                       and sup.view("fails")["state"] == "error")
        n.cancel_scope.cancel()
    assert sup.view("clean")["exit_code"] == 0
    assert sup.view("clean")["restarts"] == 0
    assert sup.view("fails")["error"] == "exited with status 7"


async def _publish_times(hub: Hub, t0: float, count: int) -> list[float]:
    """When the next `count` snapshots were published, after t0."""
    times, seq = [], 0
    while len(times) < count:
        snap = await hub.wait_after(seq)
        seq = snap.seq
        times.append(snap.mono - t0)
    return times


def test_snapshots_leave_on_schedule_however_long_the_measuring_takes(tmp_path: Path,
                                                                      plugins) -> None:
    # The probe pass starts ahead of each tick, by its bound (here half the
    # interval): how long it takes moves the figures, not the snapshot.
    cfg = make_config(tmp_path, "", plugins, interval=1.0)
    hub = Hub(interval=1.0, history_seconds=0)
    durations = [0.0, 0.3, 0.5, 0.1, 0.8, 0.0, 0.0]
    published: list[float] = []

    async def main() -> None:
        sup = Supervisor(cfg, plugins, hub)
        measure = sup._measure

        async def slow_measure():
            stats = await measure()
            await trio.sleep(durations.pop(0))
            return stats

        sup._measure = slow_measure  # type: ignore[method-assign]
        # As when some running component has probes to wait for.
        sup._probing = lambda: True  # type: ignore[method-assign]
        t0 = trio.current_time()
        async with trio.open_nursery() as n:
            await n.start(sup.run)
            # The caller holds the loop a while before the tick loop first
            # runs (python -m core freezes its start-up objects here).
            clock.jump(0.37)
            published.extend(await _publish_times(hub, t0, 7))
            n.cancel_scope.cancel()

    clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(main, clock=clock)
    # On time while the pass fits its bound; the one that overran (0.8 s) is
    # late by the overrun, and the next one is back on schedule, no burst.
    assert published == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.3, 5.0, 6.0])


def test_without_probes_the_table_is_read_at_the_tick_itself(tmp_path: Path, plugins) -> None:
    # Nothing to wait for: one wake-up a tick, the figures read just before
    # the snapshot leaves, not half an interval ahead.
    cfg = make_config(tmp_path, "", plugins, interval=1.0)
    hub = Hub(interval=1.0, history_seconds=0)
    measured: list[float] = []
    published: list[float] = []

    async def main() -> None:
        sup = Supervisor(cfg, plugins, hub)
        measure = sup._measure

        async def timed_measure():
            measured.append(trio.current_time() - t0)
            return await measure()

        sup._measure = timed_measure  # type: ignore[method-assign]
        t0 = trio.current_time()
        async with trio.open_nursery() as n:
            await n.start(sup.run)
            published.extend(await _publish_times(hub, t0, 4))
            n.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert published == pytest.approx([0.0, 1.0, 2.0, 3.0])
    assert measured[-3:] == pytest.approx([1.0, 2.0, 3.0])


async def test_depends_on_waits_for_healthy(tmp_path: Path, plugins) -> None:
    port = _free_port()
    # storage opens its port only after 0.6 s; api must not start before.
    opener = (f"import socket, time; time.sleep(0.6); s = socket.socket(); "
              f"s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(60)")
    body = (f'[components.api]\nplugin = "process"\ncommand = {sleeper()}\n'
            f'depends_on = ["storage"]\n'
            f'[components.storage]\nplugin = "process"\ncommand = ["{PY}", "-c", "{opener}"]\n'
            f'health_tcp = "127.0.0.1:{port}"\n')
    sup = Supervisor(make_config(tmp_path, body, plugins), plugins)
    health_when_api_ran: list[str | None] = []

    def spy(cid: str, old: S, new: S) -> None:
        if cid == "api" and new == S.RUNNING:
            health_when_api_ran.append(sup.view("storage")["health"])

    sup.add_listener(spy)
    rec = Recorder(sup)
    async with trio.open_nursery() as n:
        await n.start(sup.run)
        await wait_for(lambda: sup.view("api")["state"] == "running")
        assert health_when_api_ran == ["healthy"]
        order: list[str] = []
        sup.add_listener(lambda cid, old, new: order.append(f"{cid}:{new.value}"))
        await sup.shutdown()
        n.cancel_scope.cancel()
    assert rec.seen["api"][:2] == ["stopped", "starting"]
    # reverse order on shutdown: api is stopped before storage starts stopping
    assert order.index("api:stopped") < order.index("storage:stopping")


class BadPlugin:
    """A plugin that misbehaves in the hook named by the component's `fail` option."""

    @hookimpl
    def validate_config(self, component_id, options):
        return options

    @hookimpl
    def start(self, component):
        if component.options.get("fail") == "start-raise":
            raise RuntimeError("cannot start: boom")
        if component.options.get("fail") == "start-hang":
            time.sleep(30)
        if component.options.get("fail") == "start-garbage":
            return 42
        return Launch(argv=(PY, "-c", "import time; time.sleep(60)"))

    @hookimpl
    def probe(self, component, pid):
        mode = component.options.get("fail")
        if mode == "probe-raise":
            raise ValueError("probe exploded")
        if mode == "probe-hang":
            time.sleep(30)
        if mode == "probe-garbage":
            return {"healthy": "yes"}
        return Probe(healthy=True, metrics={"total_concepts": 5, "bogus": 1})

    @hookimpl
    def stop(self, component, pid):
        if component.options.get("fail") == "stop-hang":
            time.sleep(30)
        if component.options.get("fail") == "stop-raise":
            raise OSError("stop exploded")


async def test_misbehaving_plugins_affect_only_their_component(tmp_path: Path) -> None:
    plugins = make_plugins({"bad": BadPlugin()})
    modes = ["start-raise", "start-hang", "start-garbage", "probe-raise", "probe-hang",
             "probe-garbage", "stop-hang", "stop-raise", "none"]
    body = "".join(
        f'[components.{m.replace("-", "_")}]\nplugin = "bad"\nfail = "{m}"\n'
        "start_timeout = 0.5\nprobe_timeout = 0.3\nstop_timeout = 1.0\nmax_failures = 2\n"
        "backoff_initial = 0.1\n" for m in modes)
    sup = Supervisor(make_config(tmp_path, body, plugins, interval=0.3), plugins)
    async with trio.open_nursery() as n:
        await n.start(sup.run)
        await wait_for(lambda: all(sup.view(c)["state"] == "error"
                                   for c in ("start_raise", "start_hang", "start_garbage")))
        await wait_for(lambda: sup.view("probe_hang")["health"] == "unhealthy")
        await wait_for(lambda: sup.view("probe_garbage")["health"] == "unhealthy")
        assert "cannot start: boom" in sup.view("start_raise")["error"]
        assert "did not return within 0.5 s" in sup.view("start_hang")["error"]
        assert "expected core.Launch" in sup.view("start_garbage")["error"]
        assert "probe exploded" in sup.view("probe_raise")["error"]
        assert "did not return within 0.3 s" in sup.view("probe_hang")["error"]
        assert "expected core.Probe" in sup.view("probe_garbage")["error"]
        healthy = sup.view("none")
        assert healthy["state"] == "running" and healthy["health"] == "healthy"
        assert healthy["error"] is None
        # ticks keep coming although one probe hangs
        ticks = sup.tick_count
        await wait_for(lambda: sup.tick_count >= ticks + 3, timeout=5)
        doc = await sup.tick()
        assert doc["metrics"]["total_concepts"] >= 5
        assert "bogus" not in doc["metrics"]
        with trio.fail_after(5):
            await sup.shutdown()
        n.cancel_scope.cancel()
    assert sup.view("stop_hang")["state"] == "stopped"
    assert sup.view("stop_raise")["state"] == "stopped"


async def test_grandchild_ignoring_sigterm_does_not_survive_stop(tmp_path: Path, plugins) -> None:
    script = tmp_path / "parent.py"
    pidfile = tmp_path / "grandchild.pid"
    script.write_text(
        "import subprocess, sys, time\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(g.pid))\n"
        "time.sleep(60)\n")
    body = (f'[components.p]\nplugin = "process"\ncommand = ["{PY}", "{script}"]\n'
            "stop_timeout = 0.5\n")
    sup = Supervisor(make_config(tmp_path, body, plugins), plugins)
    async with trio.open_nursery() as n:
        await n.start(sup.run)
        await wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
        grandchild = int(pidfile.read_text())
        pid = sup.view("p")["pid"]
        with trio.fail_after(5):
            await sup.shutdown()
        n.cancel_scope.cancel()
    await wait_for(lambda: not alive(grandchild) and not alive(pid), timeout=3)


async def test_snapshot_document_shape(tmp_path: Path, plugins) -> None:
    body = (f'[components.a]\nplugin = "process"\nname = "Alpha"\ncommand = {sleeper()}\n'
            '[components.b]\nplugin = "process"\nautostart = false\ncommand = "true"\n')
    sup = Supervisor(make_config(tmp_path, body, plugins), plugins)
    async with trio.open_nursery() as n:
        await n.start(sup.run)
        await wait_for(lambda: sup.view("a")["state"] == "running")
        await trio.sleep(0.2)
        doc = await sup.tick()
        await sup.shutdown()
        n.cancel_scope.cancel()
    assert set(doc) == {"components", "metrics"}
    seed = {"name", "state", "pid", "uptime", "cpu_percent", "memory_mb", "error",
            "last_updated"}
    a, b = doc["components"]["a"], doc["components"]["b"]
    assert seed <= set(a)
    assert a["name"] == "Alpha" and a["state"] == "running"
    assert isinstance(a["pid"], int) and isinstance(a["uptime"], float)
    assert isinstance(a["cpu_percent"], float) and a["memory_mb"] > 1
    assert a["last_updated"].endswith("Z")
    assert b["state"] == "stopped"
    assert b["pid"] is b["uptime"] is b["cpu_percent"] is b["memory_mb"] is None
    m = doc["metrics"]
    assert list(m) == ["timestamp", "total_concepts", "total_associations", "storage_size_mb",
                       "queries_per_second", "avg_latency_ms", "cpu_percent", "memory_percent"]
    assert m["timestamp"].endswith("Z")
    assert 0 < m["memory_percent"] < 100


async def test_reload(tmp_path: Path, plugins) -> None:
    body = (f'[components.keep]\nplugin = "process"\ncommand = {sleeper()}\n'
            f'[components.change]\nplugin = "process"\ncommand = {sleeper()}\n'
            f'[components.gone]\nplugin = "process"\ncommand = {sleeper()}\n')
    cfg = make_config(tmp_path, body, plugins)
    sup = Supervisor(cfg, plugins)
    async with trio.open_nursery() as n:
        await n.start(sup.run)
        await wait_for(lambda: all(sup.view(c)["state"] == "running" for c in sup.component_ids()))
        pids = {c: sup.view(c)["pid"] for c in sup.component_ids()}
        # A broken config is rejected and nothing changes.
        cfg.path.write_text(cfg.path.read_text() + "\n[components.oops]\nplugin = 1\n")
        with pytest.raises(Exception, match=r"components\.oops\.plugin"):
            await sup.reload()
        assert sup.component_ids() == ["keep", "change", "gone"]
        new_body = (f'[components.keep]\nplugin = "process"\ncommand = {sleeper()}\n'
                    f'[components.change]\nplugin = "process"\ncommand = {sleeper(61)}\n'
                    f'[components.new]\nplugin = "process"\ncommand = {sleeper()}\n')
        cfg.path.write_text(f"[server]\nport = 0\ninterval = 0.2\n\n{new_body}")
        result = await sup.reload()
        assert result == {"added": ["new"], "removed": ["gone"], "changed": ["change"],
                          "unchanged": ["keep"]}
        await wait_for(lambda: all(sup.view(c)["state"] == "running" for c in sup.component_ids()))
        assert sup.view("keep")["pid"] == pids["keep"]
        assert sup.view("change")["pid"] != pids["change"]
        assert not alive(pids["gone"])
        await sup.shutdown()
        n.cancel_scope.cancel()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
