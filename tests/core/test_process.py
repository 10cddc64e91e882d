"""ChildProcess with real children: exit codes, output, stop escalation, stragglers."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import trio

from core import process, proctable
from core import spawn as spawn_mod
from core.logs import LogTail
from core.process import CHILD_ENV, RUN_ID, ChildProcess, SpawnError
from tests.core.helpers_process import (
    REPO,
    SPAWN_PATHS,
    alive,
    choose_spawn_path,
    notes,
    py,
    wait_gone,
    wait_text,
)

# A grandchild that ignores SIGTERM and reports its pid; `session` puts it in a
# session of its own (it leaves the child's process group), stdout inherited.
GRANDCHILD = """
import os, signal, subprocess, sys, time
gc = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('gc-ready', flush=True); time.sleep(60)"], start_new_session={session})
print("gc", gc.pid, flush=True)
{after}
"""


def grandchild(*, session: bool, after: str = "time.sleep(60)") -> list[str]:
    return py(GRANDCHILD.format(session=session, after=after))


@pytest.fixture
def subreaper() -> Iterator[None]:
    assert process.enable_subreaper()
    try:
        yield
    finally:
        process.enable_subreaper(False)
        process.reap_orphans()


async def spawn(nursery: trio.Nursery, argv: list[str], log: LogTail | None = None,
                **kw: object) -> ChildProcess:
    return await ChildProcess.spawn(nursery, argv, cwd=kw.pop("cwd", None),  # type: ignore[arg-type]
                                    env=kw.pop("env", None),  # type: ignore[arg-type]
                                    log=log or LogTail(None), **kw)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_exit_codes_and_signals() -> None:
    reaped: list[ChildProcess] = []
    async with trio.open_nursery() as n:
        ok = await spawn(n, py("pass"))
        three = await spawn(n, py("import sys; sys.exit(3)"), on_exit_reaped=reaped.append)
        killed = await spawn(n, py("import os, signal; os.kill(os.getpid(), signal.SIGTERM)"))
        assert ok.pgid == ok.pid and os.getsid(three.pid) == three.pid
        assert three.returncode is None or three.returncode == 3
        assert await ok.wait() == 0
        assert await three.wait() == 3
        assert await killed.wait() == -signal.SIGTERM
    assert reaped == [three]
    assert three.returncode == 3


@pytest.mark.anyio
async def test_waiting_does_not_block_the_loop() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0.01)
            ticks += 1

    async with trio.open_nursery() as n:
        child = await spawn(n, py("import time; time.sleep(0.3)"))
        n.start_soon(ticker)
        assert await child.wait() == 0
        n.cancel_scope.cancel()
    assert ticks >= 10


@pytest.mark.anyio
async def test_several_waiters_get_the_same_code() -> None:
    codes: list[int] = []
    async with trio.open_nursery() as n:
        child = await spawn(n, py("import sys, time; time.sleep(0.2); sys.exit(7)"))

        async def waiter() -> None:
            codes.append(await child.wait())

        for _ in range(3):
            n.start_soon(waiter)
    assert codes == [7, 7, 7]


@pytest.mark.anyio
async def test_env_cwd_and_the_marker(tmp_path: Path) -> None:
    log = LogTail(None)
    code = f"import os; print(os.getcwd(), os.environ['FOO'], os.environ['{CHILD_ENV}'])"
    async with trio.open_nursery() as n:
        child = await spawn(n, py(code), log, cwd=str(tmp_path), env={"FOO": "bar"})
        assert await child.wait() == 0
    cwd, foo, marker = log.tail(1)[0].text.split()
    assert (cwd, foo) == (str(tmp_path), "bar")
    assert marker == child.marker and marker.startswith(RUN_ID + "/")


@pytest.fixture(params=SPAWN_PATHS)
def spawn_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test that uses it runs through every way of starting a child."""
    native, wrapper = choose_spawn_path(request.param)
    monkeypatch.setattr(spawn_mod, "use_native", native)
    monkeypatch.setattr(spawn_mod, "use_wrapper", wrapper)


@pytest.mark.anyio
@pytest.mark.usefixtures("spawn_path")
async def test_spawn_errors_say_what_is_wrong(tmp_path: Path) -> None:
    before = dict(process._live)
    not_exec = tmp_path / "script.sh"
    not_exec.write_text("#!/bin/sh\necho hi\n")
    async with trio.open_nursery() as n:
        with pytest.raises(SpawnError, match="command not found: no-such-command-xyz"):
            await spawn(n, ["no-such-command-xyz"])
        with pytest.raises(SpawnError, match=r"permission denied: .*script\.sh"):
            await spawn(n, [str(not_exec)])
        with pytest.raises(SpawnError, match=r"working directory not found: .*nowhere"):
            await spawn(n, py("pass"), cwd=str(tmp_path / "nowhere"))
        with pytest.raises(SpawnError, match="empty command"):
            await spawn(n, [])
        with pytest.raises(SpawnError, match=r"permission denied: .*"):
            await spawn(n, [str(tmp_path)])  # a directory
        sub = tmp_path / "bin"
        sub.mkdir()
        (sub / "tool").write_text("#!/bin/sh\necho tool ran\n")
        (sub / "tool").chmod(0o755)
        with pytest.raises(SpawnError, match="command not found: tool"):
            await spawn(n, ["tool"], env={"PATH": "/nowhere"})
        log = LogTail(None)
        # Looked up on the child's PATH, a relative path against its cwd.
        assert await (await spawn(n, ["tool"], log, env={"PATH": str(sub)})).wait() == 0
        assert await (await spawn(n, ["./bin/tool"], log, cwd=str(tmp_path))).wait() == 0
    assert [ln.text for ln in log.tail(2)] == ["tool ran", "tool ran"]
    assert process._live == before


@pytest.mark.anyio
@pytest.mark.usefixtures("spawn_path")
async def test_the_child_is_the_program_in_its_own_session() -> None:
    log = LogTail(None)
    async with trio.open_nursery() as n:
        child = await spawn(n, ["sleep", "60"], log)
        with trio.fail_after(5):
            # Through the wrapper, the same pid becomes the program after one more exec.
            while psutil.Process(child.pid).name() != "sleep":
                await trio.sleep(0.005)
        assert os.getsid(child.pid) == child.pid
        assert await child.stop(signal.SIGTERM, 2.0) == -signal.SIGTERM


@pytest.mark.anyio
async def test_output_is_drained_line_by_line() -> None:
    # 1 MB on each pipe: a child whose pipes nobody reads blocks at 64 KiB.
    code = ("import sys\n"
            "for i in range(20000):\n"
            "    print(f'out {i:05d} ' + 'o' * 40)\n"
            "    sys.stderr.write(f'err {i:05d} ' + 'e' * 40 + '\\n')\n"
            "sys.stdout.write('no newline at the end')\n")
    log = LogTail(None, lines=50000)
    async with trio.open_nursery() as n:
        child = await spawn(n, py(code), log)
        with trio.fail_after(20):
            assert await child.wait() == 0
    lines = log.tail(50000)
    out = [x.text for x in lines if x.stream == "stdout"]
    err = [x.text for x in lines if x.stream == "stderr"]
    assert len(out) == 20001 and len(err) == 20000
    assert out[0].startswith("out 00000 ") and out[19999].startswith("out 19999 ")
    assert out[-1] == "no newline at the end"
    assert err[-1].startswith("err 19999 ")


@pytest.mark.anyio
async def test_long_lines_are_cut_without_splitting_characters() -> None:
    # 10000 two-byte characters then a newline: 20000 bytes, more than one line's cap.
    log = LogTail(None)
    async with trio.open_nursery() as n:
        child = await spawn(n, py("import sys; sys.stdout.write('é' * 10000 + '\\nend\\n')"), log)
        await child.wait()
    texts = [x.text for x in log.tail(10)]
    assert texts[-1] == "end"
    assert "".join(texts[:-1]) == "é" * 10000
    assert all(len(t.encode()) <= 8192 for t in texts)
    assert "\ufffd" not in "".join(texts)


@pytest.mark.anyio
async def test_unwritable_log_dir_keeps_the_child_running(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    log = LogTail(tmp_path / "file" / "logs" / "x.log")
    async with trio.open_nursery() as n:
        child = await spawn(n, py("import time; print('one', flush=True); time.sleep(0.2); "
                                  "print('two')"), log)
        assert await child.wait() == 0
    assert log.file_error is not None
    assert [x.text for x in log.tail(10) if x.stream == "stdout"] == ["one", "two"]


@pytest.mark.anyio
async def test_stop_polite_child() -> None:
    log = LogTail(None)
    async with trio.open_nursery() as n:
        child = await spawn(n, py("import time; print('ready', flush=True); time.sleep(60)"), log)
        await wait_text(log, "ready")
        began = time.monotonic()
        assert await child.stop(signal.SIGTERM, 5.0) == -signal.SIGTERM
        assert time.monotonic() - began < 2.0
    assert notes(log) == [f"sent SIGTERM to process group {child.pid}"]


@pytest.mark.anyio
async def test_stop_escalates_to_sigkill_after_timeout() -> None:
    log = LogTail(None)
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)")
    async with trio.open_nursery() as n:
        child = await spawn(n, py(code), log)
        await wait_text(log, "ready")
        began = time.monotonic()
        assert await child.stop(signal.SIGTERM, 0.3) == -signal.SIGKILL
        elapsed = time.monotonic() - began
    assert 0.3 <= elapsed < 2.0
    assert notes(log) == [f"sent SIGTERM to process group {child.pid}",
                          f"still running after 0.3 s: sent SIGKILL to process group {child.pid}"]
    assert not alive(child.pid)


@pytest.mark.anyio
async def test_stop_leaves_no_grandchild_in_the_group() -> None:
    log = LogTail(None)
    async with trio.open_nursery() as n:
        child = await spawn(n, grandchild(session=False), log)
        gc = int((await wait_text(log, "gc ")).split()[1])
        await wait_text(log, "gc-ready")
        assert os.getpgid(gc) == child.pgid
        # The child dies of SIGTERM at once; the grandchild ignores it and gets SIGKILL.
        assert await child.stop(signal.SIGTERM, 0.3) == -signal.SIGTERM
        assert wait_gone([gc], 2.0) == []


@pytest.mark.anyio
async def test_stop_ends_a_grandchild_that_left_the_session_holding_stdout() -> None:
    log = LogTail(None)
    began = time.monotonic()
    async with trio.open_nursery() as n:
        child = await spawn(n, grandchild(session=True), log)
        gc = int((await wait_text(log, "gc ")).split()[1])
        await wait_text(log, "gc-ready")
        assert os.getsid(gc) == gc != child.pid
        assert await child.stop(signal.SIGTERM, 0.3) == -signal.SIGTERM
        assert wait_gone([gc], 2.0) == []
    # The nursery closed: the output readers ended although the grandchild held stdout.
    assert time.monotonic() - began < 5.0
    assert any("leftover" in t and str(gc) in t for t in notes(log))


@pytest.mark.anyio
async def test_stop_right_after_a_grandchild_appears() -> None:
    # The grandchild exists for a few milliseconds only when stop() begins, and
    # ignores SIGTERM from a session of its own: only a process table read after
    # the stop request can find it (a cached one from just before would not).
    log = LogTail(None)
    code = """setsid sh -c 'trap "" TERM; echo gc-ready; exec sleep 60' & echo gc $!; sleep 60"""
    async with trio.open_nursery() as n:
        proctable.scan()
        child = await spawn(n, ["sh", "-c", code], log)
        gc = int((await wait_text(log, "gc ")).split()[1])
        await wait_text(log, "gc-ready")
        assert await child.stop(signal.SIGTERM, 0.3) == -signal.SIGTERM
    assert wait_gone([gc], 2.0) == []


@pytest.mark.anyio
async def test_a_burst_of_stops_leaves_nothing_behind(subreaper: None) -> None:
    # 20 children, each with a grandchild in a session of its own, stopped at once:
    # the stops share their reads of /proc, and still nothing survives.
    logs = [LogTail(None) for _ in range(20)]
    async with trio.open_nursery() as n:
        kids = [await spawn(n, ["sh", "-c", "setsid sleep 60 & echo gc $!; sleep 60"], log)
                for log in logs]
        gcs = [int((await wait_text(log, "gc ")).split()[1]) for log in logs]
        began = time.monotonic()
        async with trio.open_nursery() as stops:
            for kid in kids:
                stops.start_soon(kid.stop, signal.SIGTERM, 5.0)
        assert time.monotonic() - began < 5.0
    assert [k.returncode for k in kids] == [-signal.SIGTERM] * 20
    assert wait_gone(gcs, 2.0) == []


@pytest.mark.anyio
async def test_an_exited_childs_orphan_is_found_by_its_marker(subreaper: None) -> None:
    # The child exits at once; its setsid()ed grandchild is adopted by us (subreaper),
    # recognised by the marker it inherited, and ended although nobody called stop().
    log = LogTail(None)
    async with trio.open_nursery() as n:
        child = await spawn(n, grandchild(session=True, after="sys.exit(0)"), log)
        gc = int((await wait_text(log, "gc ")).split()[1])
        assert await child.wait() == 0
        with trio.fail_after(5):
            while alive(gc):
                await trio.sleep(0.02)
    assert any("leaving processes behind" in t for t in notes(log))
    assert child.pid not in process._live


@pytest.mark.anyio
async def test_a_cancelled_cleanup_still_kills_and_reaps() -> None:
    # The child exits; its group member ignores SIGTERM, so the cleanup waits for
    # the grace period; cancelling it there must not leave the member or a zombie.
    log = LogTail(None)
    async with trio.open_nursery() as n:
        child = await spawn(n, grandchild(session=False, after="sys.exit(0)"), log)
        gc = int((await wait_text(log, "gc ")).split()[1])
        await wait_text(log, "gc-ready")
        assert await child.wait() == 0
        await trio.sleep(0.2)
        assert alive(gc)
        n.cancel_scope.cancel()
    assert wait_gone([gc], 2.0) == []
    assert child.pid not in process._live
    assert not psutil.pid_exists(child.pid)  # reaped, not left a zombie


@pytest.mark.anyio
async def test_an_exited_childs_group_member_is_ended() -> None:
    log = LogTail(None)
    async with trio.open_nursery() as n:
        child = await spawn(n, ["sh", "-c", "sleep 60 & echo bg $!"], log)
        bg = int((await wait_text(log, "bg ")).split()[1])
        assert await child.wait() == 0
    # The nursery only closes once the leftover is gone and the pipes are closed.
    assert not alive(bg)


@pytest.mark.anyio
async def test_kill_all_now() -> None:
    log = LogTail(None)
    async with trio.open_nursery() as n:
        a = await spawn(n, py("import time; time.sleep(60)"))
        b = await spawn(n, grandchild(session=True), log)
        gc = int((await wait_text(log, "gc ")).split()[1])
        process.kill_all_now()
        assert a.returncode == -signal.SIGKILL and b.returncode == -signal.SIGKILL
        assert wait_gone([gc], 2.0) == []
        assert a.pid not in process._live and b.pid not in process._live


def test_reap_orphans_reaps_adopted_zombies_only(subreaper: None) -> None:
    own = subprocess.Popen(["true"])  # our own child, in our session: not an orphan
    parent = subprocess.Popen(
        py("import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
           "'import time; time.sleep(0.3)'], start_new_session=True); print(p.pid)"),
        stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    orphan = int(parent.stdout.readline())
    parent.stdout.close()
    assert parent.wait() == 0
    assert orphan in [p.pid for p in process.stragglers()]
    deadline = time.monotonic() + 5
    reaped: list[int] = []
    while orphan not in reaped and time.monotonic() < deadline:
        reaped += process.reap_orphans()
        time.sleep(0.02)
    assert orphan in reaped
    assert own.pid not in reaped
    assert own.wait() == 0  # its status was not stolen


DEATH_SCRIPT = """
import sys, trio
sys.path.insert(0, {repo!r})
from core.logs import LogTail
from core import spawn
from core.process import ChildProcess
spawn.use_native, spawn.use_wrapper = {path!r}

async def main():
    async with trio.open_nursery() as n:
        child = await ChildProcess.spawn(n, [sys.executable, "-c", "import time; time.sleep(60)"],
                                         cwd=None, env=None, log=LogTail(None))
        print(child.pid, flush=True)
        await trio.sleep(60)

trio.run(main)
"""


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_children_die_with_a_killed_supervisor(path: str) -> None:
    # Every way of setting the death signal: the native spawner, the exec
    # wrapper where setpriv has --pdeathsig, and the preexec_fn otherwise.
    chosen = choose_spawn_path(path)
    script = subprocess.Popen(py(DEATH_SCRIPT.format(repo=str(REPO), path=chosen)),
                              stdout=subprocess.PIPE, text=True)
    assert script.stdout is not None
    try:
        child = int(script.stdout.readline())
        assert alive(child)
    finally:
        script.kill()
        script.wait()
        script.stdout.close()
    assert wait_gone([child], 2.0) == []
