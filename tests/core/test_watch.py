"""watch: real files, a real inotify watcher, a real supervisor restarting a real child."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from core import watch as watch_mod
from core.config import ConfigError, load
from core.events import EventLog
from core.plugins import PluginManager
from core.supervisor import Supervisor
from tests.core.test_component_keys import write

pytestmark = pytest.mark.anyio


class Running:
    def __init__(self, sup: Supervisor, events: EventLog) -> None:
        self.sup, self.events = sup, events
        self.seen = 0

    def restarts(self) -> list[str]:
        return [e.data["reason"] for e in self.events.recent if e.kind == "restart"]

    async def next_restart(self, timeout: float = 15) -> str:
        with trio.fail_after(timeout):
            while len(self.restarts()) <= self.seen:
                await self.events.wait_after(self.events.recent[-1].id
                                             if self.events.recent else 0)
        self.seen += 1
        return self.restarts()[self.seen - 1]

    async def running(self, cid: str = "job", other_than: int | None = None) -> int:
        with trio.fail_after(10):
            while True:
                view = self.sup.view(cid)
                if view["state"] == "running" and view["pid"] not in (None, other_than):
                    return view["pid"]
                await trio.sleep(0.02)


async def supervise(path: Path, body):
    plugins = PluginManager(load_entry_points=False)
    events = EventLog()
    sup = Supervisor(load(path, plugins=plugins.names, validate=plugins.validate), plugins,
                     events=events)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        try:
            await body(Running(sup, events))
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(15):
                await sup.shutdown()
            nursery.cancel_scope.cancel()


def config(tmp_path: Path, keys: str, command: str = '["sleep", "60"]') -> Path:
    return write(tmp_path, f'[components.job]\nplugin = "process"\ncommand = {command}\n'
                           f"{keys}\n")


async def test_a_burst_of_changes_restarts_once_and_unwatched_files_never(tmp_path):
    src = tmp_path / "src" / "pkg"
    src.mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("")
    path = config(tmp_path, 'watch = ["src/**/*.py"]')

    async def body(run: Running) -> None:
        first = await run.running()
        for i in range(7):  # one burst: files further apart than awatch's own 50 ms
            (src / f"m{i}.py").write_text(f"x = {i}\n")
            await trio.sleep(0.1)  # well inside QUIET
        (tmp_path / "notes.txt").write_text("not watched\n")
        (src / "data.json").write_text("{}")  # not a .py
        reason = await run.next_restart()
        assert reason.startswith("files changed: src/pkg/m0.py, src/pkg/m1.py")
        assert reason.endswith("and 2 more") and "notes" not in reason and "json" not in reason
        second = await run.running(other_than=first)
        # Only unwatched files now, then one watched file: exactly one more restart,
        # for that file alone (a split burst or an unwatched file would show here).
        (tmp_path / "notes.txt").write_text("still not watched\n")
        (src / "data.json").write_text("[]")
        await trio.sleep(watch_mod.QUIET * 2)
        (tmp_path / "src" / "top.py").write_text("")
        assert await run.next_restart() == "files changed: src/top.py"
        await run.running(other_than=second)
        assert len(run.restarts()) == 2
        assert any("restarting: files changed" in line.text
                   for line in run.sup.log("job").tail(100))

    await supervise(path, body)


async def test_globs_are_relative_to_cwd_and_its_own_writes_do_not_count(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    # The child writes to its data directory and its log, which lie under the glob.
    code = ("import os, time, sys\n"
            "d = sys.argv[1]\n"
            "for i in range(40):\n"
            "    open(os.path.join(d, 'state.txt'), 'w').write(str(i)); print(i, flush=True)\n"
            "    time.sleep(0.05)\n"
            "time.sleep(60)\n")
    (app / "child.py").write_text(code)
    import sys

    command = f'["{sys.executable}", "child.py", "{tmp_path / "data" / "job"}"]'
    path = write(tmp_path, f'[components.job]\nplugin = "process"\ncommand = {command}\n'
                           'cwd = "app"\nwatch = ["**", "../data/**", "../logs/**"]\n')

    async def body(run: Running) -> None:
        await run.running()
        with trio.fail_after(10):
            while (tmp_path / "data" / "job" / "state.txt").read_text() != "39" if (
                    tmp_path / "data" / "job" / "state.txt").exists() else True:
                await trio.sleep(0.05)
        (app / "child.py").write_text(code + "\n")
        assert await run.next_restart() == "files changed: child.py"
        assert len(run.restarts()) == 1

    await supervise(path, body)


async def test_a_stopped_component_is_not_started_and_removal_stops_the_watch(tmp_path):
    (tmp_path / "w").mkdir()
    path = config(tmp_path, 'watch = ["w/*"]\nautostart = false')

    async def body(run: Running) -> None:
        (tmp_path / "w" / "a").write_text("1")
        await trio.sleep(watch_mod.QUIET * 3)
        assert run.sup.view("job")["state"] == "stopped" and run.restarts() == []
        path.write_text(path.read_text().replace("[components.job]", "[components.other]"))
        began = time.monotonic()
        assert (await run.sup.reload())["removed"] == ["job"]
        assert time.monotonic() - began < 3  # awatch's own cancel would take 5 s under trio
        assert run.sup._watchers._tasks.keys() == {"other"}

    await supervise(path, body)


async def test_shutdown_ends_the_watch_at_once(tmp_path):
    path = config(tmp_path, 'watch = ["*.py"]')
    plugins = PluginManager(load_entry_points=False)
    sup = Supervisor(load(path, plugins=plugins.names, validate=plugins.validate), plugins)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            await sup.shutdown()
            began = time.monotonic()
            nursery.cancel_scope.cancel()
    assert time.monotonic() - began < 2


@pytest.mark.parametrize(("value", "words"), [
    ('"src/*.py"', "expected an array of strings"), ("[1]", "components.job.watch[0]")])
def test_watch_mistakes_name_the_key(tmp_path, value, words):
    with pytest.raises(ConfigError) as refused:
        load(config(tmp_path, f"watch = {value}"))
    assert "components.job.watch" in str(refused.value) and words in str(refused.value)


@pytest.mark.parametrize(("glob", "path", "hit"), [
    ("/a/src/**/*.py", "/a/src/x.py", True),
    ("/a/src/**/*.py", "/a/src/b/c/x.py", True),
    ("/a/src/**/*.py", "/a/srcx/x.py", False),
    ("/a/src/*.py", "/a/src/b/x.py", False),
    ("/a/src/?.py", "/a/src/xy.py", False),
    ("/a/[ab].txt", "/a/b.txt", True),
    ("/a/[!ab].txt", "/a/b.txt", False),
    ("/a/**", "/a/b/c", True),
    ("/a/x+y.py", "/a/x+y.py", True),
])
def test_glob_translation(glob, path, hit):
    import re

    assert bool(re.fullmatch(watch_mod._translate(glob), path)) is hit


async def test_a_watch_that_cannot_start_harms_nothing_else(tmp_path):
    """A missing cwd, a glob outside it whose directory is not there: logged, and the
    supervisor and the other components go on; no watch of / either."""
    path = write(tmp_path, '[components.job]\nplugin = "process"\ncommand = ["sleep", "60"]\n'
                           'cwd = "app"\nwatch = ["*.py", "/no/such/dir/**/*.py"]\n'
                           '[components.ok]\nplugin = "process"\ncommand = ["sleep", "60"]\n')
    spec = watch_mod.spec_for(load(path).components["job"], load(path).server, tmp_path)
    assert spec is not None and spec.roots() == []

    async def body(run: Running) -> None:
        await run.running("ok")
        assert set(run.sup._watchers._tasks) == {"job"}

    await supervise(path, body)


def test_roots_stop_at_the_base_and_never_nest(tmp_path):
    (tmp_path / "src" / "a").mkdir(parents=True)
    spec = watch_mod.Spec(patterns=(f"{tmp_path}/src/**/*.py", f"{tmp_path}/src/a/*.txt",
                                    f"{tmp_path}/later/*.py"),
                          base=tmp_path, ignore_dirs=(), ignore_files=())
    assert spec.roots() == [tmp_path]  # later/ does not exist yet: its parent, the base
    spec = watch_mod.Spec(patterns=(f"{tmp_path}/src/**/*.py", f"{tmp_path}/src/a/*.txt"),
                          base=tmp_path, ignore_dirs=(), ignore_files=())
    assert spec.roots() == [tmp_path / "src"]


async def test_a_reload_that_changes_only_watch_keeps_the_process_and_the_new_globs_apply(
        tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    path = config(tmp_path, 'watch = ["a/*"]')

    async def body(run: Running) -> None:
        pid = await run.running()
        path.write_text(path.read_text().replace('watch = ["a/*"]', 'watch = ["b/*"]'))
        assert (await run.sup.reload())["changed"] == ["job"]
        assert run.sup.view("job")["pid"] == pid  # watch alone restarts nothing
        (tmp_path / "a" / "x").write_text("old glob")
        (tmp_path / "b" / "y").write_text("new glob")
        assert await run.next_restart() == "files changed: b/y"
        await run.running(other_than=pid)

    await supervise(path, body)


async def test_a_watch_restart_refused_by_a_shutdown_harms_nothing(tmp_path):
    """The burst's restart may meet a shutdown that began after the burst was seen:
    refused, logged, and the supervisor goes on shutting down (it once died of it)."""
    (tmp_path / "w").mkdir()
    path = config(tmp_path, 'watch = ["w/*"]')

    async def body(run: Running) -> None:
        await run.running()
        run.sup._shutting_down = True  # as shutdown() sets it first
        await run.sup._restart_quietly("job")  # would raise ShuttingDown
        await run.sup._restart_quietly("gone")  # removed meanwhile: UnknownComponent
        assert run.sup.view("job")["state"] == "running"

    await supervise(path, body)
