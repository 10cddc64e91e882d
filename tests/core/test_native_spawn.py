"""The native spawner (core/_spawn.c): built here, and what it gives a child.

Beside the tests every spawn path runs (test_process, test_run_as), these
check what only the native spawner does by hand: the descriptors, the
signal dispositions, a step that fails before the exec, and its build.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import sysconfig
import uuid
from pathlib import Path

import pytest
import trio

from core import cgroup, spawn
from core.logs import LogTail
from core.process import ChildProcess, SpawnError
from tests import cgroups
from tests.core.helpers_process import SPAWN_PATHS, choose_spawn_path

pytestmark = pytest.mark.anyio


def test_the_native_spawner_is_built_where_a_compiler_is() -> None:
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if shutil.which(os.environ.get("CC", "cc")) is None or not headers.exists():
        pytest.skip("no C compiler or no Python headers: the setpriv path is used")
    from core import _spawn

    assert "cgroup.procs" in _spawn.STEPS
    saved = spawn.use_native
    spawn.use_native = None
    try:
        assert spawn._native_works()
    finally:
        spawn.use_native = saved


def test_the_log_says_how_children_are_started(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    choose_spawn_path("native")
    monkeypatch.setattr(spawn, "_path", None)
    with caplog.at_level("INFO", logger="control_center"):
        for _ in range(2):
            started = spawn.popen(["true"], cwd=None, env=dict(os.environ))
            assert started.wait(5) == 0
            for pipe in (started.stdout, started.stderr):
                assert pipe is not None
                pipe.close()
    said = [r.getMessage() for r in caplog.records if "children are started" in r.getMessage()]
    assert said == ["children are started by the native spawner (core._spawn)"]


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def _mask(*signals: int) -> int:
    return sum(1 << (s - 1) for s in signals)


async def _sleeper(nursery: trio.Nursery) -> ChildProcess:
    child = await ChildProcess.spawn(nursery, ["sleep", "60"], cwd=None, env=None,
                                     log=LogTail(None))
    with trio.fail_after(5):  # through setpriv, sleep comes two execs later
        while Path(f"/proc/{child.pid}/comm").read_text().strip() != "sleep":
            await trio.sleep(0.005)
    return child


@pytest.mark.parametrize("path", SPAWN_PATHS)
async def test_the_child_has_three_descriptors_and_default_signals(
        path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    native, wrapper = choose_spawn_path(path)
    monkeypatch.setattr(spawn, "use_native", native)
    monkeypatch.setattr(spawn, "use_wrapper", wrapper)
    # What the supervisor has that its children must not: an open file, a
    # handled signal, an ignored SIGPIPE (as Python always does) and SIGHUP.
    kept = os.open(os.devnull, os.O_RDONLY)  # inheritable: close_fds must close it
    os.set_inheritable(kept, True)
    old_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    old_usr1 = signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        async with trio.open_nursery() as n:
            child = await _sleeper(n)
            try:
                # sleep opens its locale files for a moment as it starts; an
                # inherited descriptor would stay.
                with trio.move_on_after(2):
                    while (fds := sorted(os.listdir(f"/proc/{child.pid}/fd"))) != ["0", "1", "2"]:
                        await trio.sleep(0.01)
                assert fds == ["0", "1", "2"]
                assert os.readlink(f"/proc/{child.pid}/fd/0") == os.devnull
                st = _status(child.pid)
                ignored, caught = int(st["SigIgn"], 16), int(st["SigCgt"], 16)
                assert int(st["SigBlk"], 16) == 0
                assert caught == 0  # sleep catches nothing
                assert not ignored & _mask(signal.SIGPIPE, signal.SIGUSR1)
                assert ignored & _mask(signal.SIGHUP)  # kept ignored, as subprocess does
            finally:
                await child.stop(signal.SIGTERM, 2.0)
    finally:
        os.close(kept)
        signal.signal(signal.SIGHUP, old_hup)
        signal.signal(signal.SIGUSR1, old_usr1)


def _children() -> set[int]:
    pids: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        pids.update(map(int, Path(f"/proc/self/task/{tid}/children").read_text().split()))
    return pids


def test_a_step_before_the_exec_that_fails_is_named_and_leaves_no_process() -> None:
    choose_spawn_path("native")
    # Joining the cgroup is one write of "0"; /dev/full refuses every write.
    before = _children()
    with pytest.raises(SpawnError, match=r"^cannot start sleep: cgroup.procs failed: "
                                         r"No space left on device$"):
        spawn.popen(["sleep", "60"], cwd=None, env=dict(os.environ), cgroup="/dev/full")
    assert _children() <= before  # reaped already: not even a zombie is left
    from core import _spawn

    # /dev is no cgroup: clone3 refused to create the child in it, and the
    # write that followed gave the error. The refusal was this cgroup's own,
    # not the kernel's for clone3: the next child is still created in its cgroup.
    assert _spawn.creates_in_cgroup() == (platform.machine() == "x86_64")


@pytest.mark.skipif(platform.machine() != "x86_64",
                    reason="created in its cgroup by clone3 on x86-64 only")
def test_a_child_is_created_in_its_cgroup_not_moved_there() -> None:
    why = cgroups.why_not()
    if why is not None:
        pytest.skip(f"cgroups cannot be made here: {why}")
    choose_spawn_path("native")
    from core import _spawn

    tree, _ = cgroup.open_tree(f"control-center-test-{uuid.uuid4().hex[:8]}")
    assert tree is not None
    try:
        leaf = tree.new_run("c", None, None)
        started = spawn.popen(["cat", "/proc/self/cgroup"], cwd=None, env=dict(os.environ),
                              cgroup=leaf.procs_file)
        assert started.stdout is not None and started.stderr is not None
        with started.stdout, started.stderr:
            seen = started.stdout.read().decode()
        assert started.wait(5) == 0
        assert seen.split("0::")[1].strip().endswith(f"/{tree.base.name}/c/1")
        # Had the kernel refused clone3 with CLONE_INTO_CGROUP, the child
        # would have joined by writing cgroup.procs, and this would say so.
        assert _spawn.creates_in_cgroup()
    finally:
        tree.close()


@pytest.mark.parametrize(("env", "error"), [
    ({"A": 1}, TypeError),
    ({"A=B": "c"}, ValueError),
    ({"A": "b\0c"}, ValueError),
    ({"": "x"}, ValueError),
])
def test_an_environment_exec_cannot_take_is_refused_before_any_process(
        env: dict[str, object], error: type[Exception]) -> None:
    choose_spawn_path("native")
    with pytest.raises(error):
        spawn._environment(env)  # type: ignore[arg-type]
