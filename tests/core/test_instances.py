"""`instances = N` and scaling at run time, through a real supervisor and real children."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from core import instances
from core.config import ConfigError, load
from core.errors import UnknownComponent
from core.instances import ScaleError
from core.scaling import STOP_WAVE, STOP_WAVES

from .helpers_process import alive, wait_gone
from .test_component_keys import supervising

pytestmark = pytest.mark.anyio

PY = sys.executable
SLEEP = f'["{PY}", "-c", "import time; time.sleep(600)"]'


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[server]\ninterval = 0.2\ndata_dir = "{tmp_path / "data"}"\n'
                    f'log_dir = "{tmp_path / "logs"}"\n{body}')
    return path


def web(count: int | None, extra: str = "") -> str:
    key = "" if count is None else f"instances = {count}\n"
    return f'[components.web]\nplugin = "process"\ncommand = {SLEEP}\n{key}{extra}'


async def until(condition: Callable[[], bool], timeout: float = 20) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.02)


def pids(sup, prefix: str = "web.") -> dict[str, int]:
    """The live pid of every running instance, by id."""
    out = {}
    for cid in sup.component_ids():
        view = sup.view(cid)
        if cid.startswith(prefix) and view["state"] == "running" and view["pid"]:
            out[cid] = view["pid"]
    return out


def running(sup, n: int) -> Callable[[], bool]:
    return lambda: len(pids(sup)) == n and len(sup.component_ids()) == n


async def test_three_instances_scaled_to_five_then_one(tmp_path):
    async with supervising(write(tmp_path, web(3))) as sup:
        await until(running(sup, 3))
        first = pids(sup)
        assert sorted(first) == ["web.0", "web.1", "web.2"]
        assert len(set(first.values())) == 3 and all(alive(p) for p in first.values())

        view = await sup.scale("web", 5)
        assert view["instances"] == 5
        await until(running(sup, 5))
        second = pids(sup)
        assert sorted(second) == [f"web.{k}" for k in range(5)]
        assert len(set(second.values())) == 5 and all(alive(p) for p in second.values())
        # The three that ran go on running: scaling does not restart them.
        assert {k: second[k] for k in first} == first

        view = await sup.scale("web", 1)
        # Surplus ones are gone, processes included, when the answer comes.
        assert sup.component_ids() == ["web.0"] and view["instances"] == 1
        surplus = [second[f"web.{k}"] for k in range(1, 5)]
        assert wait_gone(surplus, 5) == []
        assert pids(sup) == {"web.0": first["web.0"]}
        assert alive(first["web.0"])


async def test_surplus_instances_stop_from_the_highest_index_down(tmp_path):
    order: list[str] = []
    n = 2 * STOP_WAVE + 5
    sleep = '["sleep", "600"]'  # the program itself: cheaper than n Pythons
    body = f'[components.web]\nplugin = "process"\ncommand = {sleep}\ninstances = {n}\n'
    async with supervising(write(tmp_path, body)) as sup:
        await until(running(sup, n))
        sup.add_listener(lambda cid, old, new: order.append(cid)
                         if new.value == "stopped" else None)
        await sup.scale("web", 1)
        assert sup.component_ids() == ["web.0"]
    # In waves of STOP_WAVE from the top: each wave gone before the next is asked.
    stopped = [int(cid.split(".")[1]) for cid in order[:n - 1]]
    assert sorted(stopped) == list(range(1, n))
    assert n - 1 <= STOP_WAVE * STOP_WAVES  # so the waves are STOP_WAVE each
    waves = [(n - 1 - k) // STOP_WAVE for k in stopped]
    assert waves == sorted(waves), stopped


async def test_instance_index_reaches_the_child(tmp_path):
    for k in range(3):
        (tmp_path / f"dir{k}").mkdir()
    code = ("import os, sys, time; open('seen.txt', 'w').write("
            "' '.join([sys.argv[1], os.environ['CONTROL_CENTER_INSTANCE'], "
            "os.environ['SLOT'], os.path.basename(os.getcwd())])); time.sleep(600)")
    body = (f'[components.w]\nplugin = "process"\ninstances = 3\n'
            f'command = ["{PY}", "-c", "{code}", "arg-{{instance}}"]\n'
            'cwd = "dir{instance}"\nenv = { SLOT = "slot-{instance}" }\n')
    async with supervising(write(tmp_path, body)) as sup:
        files = [tmp_path / f"dir{k}" / "seen.txt" for k in range(3)]
        await until(lambda: all(f.exists() and f.read_text() for f in files))
        assert sup.view("w.2")["instance_of"] == "w"
    for k, f in enumerate(files):
        assert f.read_text() == f"arg-{k} {k} slot-{k} dir{k}"


async def test_without_the_key_the_entry_is_plain_and_with_it_numbered(tmp_path):
    body = web(None) + f'[components.one]\nplugin = "process"\ncommand = {SLEEP}\n' \
                       "instances = 1\n"
    async with supervising(write(tmp_path, body)) as sup:
        assert sup.component_ids() == ["web", "one.0"]
        doc = await sup.tick()
    assert "instance_of" not in doc["components"]["web"]
    assert doc["components"]["one.0"]["instance_of"] == "one"
    assert set(doc["components"]) == {"web", "one.0"}


async def test_control_of_id_acts_on_every_instance_and_of_id_k_on_one(tmp_path):
    async with supervising(write(tmp_path, web(3))) as sup:
        await until(running(sup, 3))
        before = pids(sup)
        await sup.stop("web.1", wait=True)
        assert sup.view("web.1")["state"] == "stopped"
        assert pids(sup) == {"web.0": before["web.0"], "web.2": before["web.2"]}
        view = await sup.stop("web", wait=True)
        assert view["state"] == "stopped" and view["running"] == 0
        assert all(v["state"] == "stopped" for v in view["components"].values())
        assert wait_gone(list(before.values()), 5) == []
        await sup.start("web")
        await until(running(sup, 3))
        again = pids(sup)
        await sup.restart("web.0")
        await until(lambda: pids(sup).get("web.0") not in (None, again["web.0"]))
        assert {k: v for k, v in pids(sup).items() if k != "web.0"} == {
            "web.1": again["web.1"], "web.2": again["web.2"]}


async def test_depends_on_waits_for_every_instance(tmp_path):
    flags = tmp_path / "flags"
    flags.mkdir()
    (flags / "0").write_text("")
    (flags / "1").write_text("")
    body = web(3, f'health_cmd = ["test", "-f", "{flags}/{{instance}}"]\n')
    body += f'[components.client]\nplugin = "process"\ncommand = {SLEEP}\n' \
            'depends_on = ["web"]\n'
    async with supervising(write(tmp_path, body)) as sup:
        await until(lambda: sup.view("web.1")["health"] == "healthy"
                    and sup.view("web.0")["health"] == "healthy")
        await until(lambda: "web.2" in (sup.view("client")["error"] or ""))
        assert sup.view("client")["state"] == "starting"
        assert "web.0" not in sup.view("client")["error"]
        await trio.sleep(0.5)
        assert sup.view("client")["pid"] is None  # still waiting for web.2
        (flags / "2").write_text("")
        await until(lambda: sup.view("client")["state"] == "running")
        assert all(sup.view(f"web.{k}")["health"] == "healthy" for k in range(3))


async def test_a_reload_returns_to_the_configs_count(tmp_path):
    path = write(tmp_path, web(2))
    async with supervising(path) as sup:
        await until(running(sup, 2))
        kept = pids(sup)
        await sup.scale("web", 4)
        await until(running(sup, 4))
        result = await sup.reload()
        assert result["unchanged"] == ["web"]
        await until(running(sup, 2))
        assert pids(sup) == kept
        # A new count in the file: one more, the others untouched.
        path.write_text(path.read_text().replace("instances = 2", "instances = 3"))
        result = await sup.reload()
        assert result["changed"] == ["web"]
        await until(running(sup, 3))
        assert {k: pids(sup)[k] for k in kept} == kept


async def test_zero_instances_and_a_plain_component_scaled(tmp_path):
    body = web(0) + f'[components.solo]\nplugin = "process"\ncommand = {SLEEP}\n'
    async with supervising(write(tmp_path, body)) as sup:
        await until(lambda: sup.view("solo")["state"] == "running")
        assert sup.component_ids() == ["solo"]
        assert sup.view("web") | {"components": None} == {
            "name": "web", "state": "stopped", "plugin": "process", "instances": 0,
            "running": 0, "depends_on": [], "components": None}
        await sup.start("web")  # nothing to start: no error
        await sup.scale("web", 2)
        await until(lambda: len(pids(sup)) == 2)
        # Scaling a plain one to 1 changes nothing; to 2 it turns into instances.
        plain_pid = sup.view("solo")["pid"]
        await sup.scale("solo", 1)
        assert sup.view("solo")["pid"] == plain_pid
        await sup.scale("solo", 2)
        await until(lambda: len(pids(sup, "solo.")) == 2)
        assert wait_gone([plain_pid], 5) == []
        assert sup.component_ids() == ["web.0", "web.1", "solo.0", "solo.1"]


@pytest.mark.parametrize("count", [-1, 1001, 1.5, "3", True, None, [2], {"n": 1}])
async def test_a_bad_count_changes_nothing(tmp_path, count):
    async with supervising(write(tmp_path, web(2))) as sup:
        await until(running(sup, 2))
        before = pids(sup)
        with pytest.raises(ScaleError) as refused:
            await sup.scale("web", count)
        assert "instances: expected an integer from 0 to 1000" in str(refused.value)
        assert pids(sup) == before and sup.component_ids() == ["web.0", "web.1"]


async def test_scaling_an_instance_or_an_unknown_id_is_refused(tmp_path):
    async with supervising(write(tmp_path, web(2))) as sup:
        await until(running(sup, 2))
        with pytest.raises(ScaleError, match="one instance of 'web': scale 'web'"):
            await sup.scale("web.1", 3)
        with pytest.raises(UnknownComponent):
            await sup.scale("nope", 3)
        with pytest.raises(UnknownComponent):
            await sup.scale("web.7", 3)
        assert sup.component_ids() == ["web.0", "web.1"]


@pytest.mark.parametrize(("value", "words"), [
    ("-1", "expected an integer from 0 to 1000, got -1"),
    ("1001", "expected an integer from 0 to 1000, got 1001"),
    ('"3"', "expected an integer, got a string"), ("2.0", "expected an integer, got a float")])
def test_a_bad_instances_key_is_a_config_error(tmp_path, value, words):
    path = write(tmp_path, web(None, f"instances = {value}\n"))
    with pytest.raises(ConfigError) as refused:
        load(path)
    assert "components.web.instances" in str(refused.value) and words in str(refused.value)
    checked = subprocess.run([PY, "-m", "core", "check", str(path)], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 2 and "components.web.instances" in checked.stderr


def test_expand_substitutes_only_the_instance_keys():
    from core.config import parse

    cfg = parse('[components.w]\nplugin = "p"\ninstances = 2\ncommand = ["a{instance}"]\n'
                'cwd = "c{instance}"\nenv = { A = "{instance}" }\nport = "{instance}"\n',
                Path("/x/config.toml")).components["w"]
    one = instances.expand(cfg)[1]
    assert (one.id, one.instance_of, one.instance, one.instances) == ("w.1", "w", 1, None)
    assert dict(one.options) == {"command": ["a1"], "cwd": "c1", "env": {"A": "1"},
                                 "port": "{instance}"}


def test_a_notifier_for_a_component_hears_its_instances():
    from core.events import Event
    from core.notify import Notifier, NotifyConfig

    notifier = Notifier(NotifyConfig(name="n", kind="command", events=("crashed",),
                                     components=("web",), command=("true",)))

    def event(cid: str | None) -> Event:
        return Event(id=1, kind="crashed", time=0.0, component=cid, data={})

    assert notifier.wants(event("web")) and notifier.wants(event("web.3"))
    assert not notifier.wants(event("webby")) and not notifier.wants(event("api.0"))
    assert not notifier.wants(event(None))
