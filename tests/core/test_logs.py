"""LogTail: the in-memory tail, waiting for lines, the rotated file and disk errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio
import trio.testing

from core.logs import MAX_LINE, LogTail

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_lines_are_numbered_stamped_and_bounded() -> None:
    log = LogTail(None, lines=5)
    for i in range(8):
        line = log.append("stdout" if i % 2 else "stderr", f"line {i}")
        assert line.seq == i + 1
    assert log.last_seq == 8
    kept = log.tail(100)
    assert [x.text for x in kept] == [f"line {i}" for i in range(3, 8)]
    assert [x.seq for x in kept] == [4, 5, 6, 7, 8]
    assert all(TIME.match(x.time) for x in kept)
    assert [x.stream for x in kept] == ["stdout", "stderr", "stdout", "stderr", "stdout"]
    assert [x.text for x in log.tail(2)] == ["line 6", "line 7"]
    assert log.tail(0) == []


def test_since_returns_only_newer_lines_still_kept() -> None:
    log = LogTail(None, lines=5)
    for i in range(8):
        log.append("stdout", str(i))
    assert [x.seq for x in log.since(6)] == [7, 8]
    assert log.since(8) == []
    assert [x.seq for x in log.since(0)] == [4, 5, 6, 7, 8]  # older ones are gone
    assert LogTail(None).since(0) == []


def test_note_is_a_supervisor_line_and_text_is_one_line_capped() -> None:
    log = LogTail(None)
    assert log.note("started pid 123").stream == "supervisor"
    log.append("stdout", "a\nb\n")
    log.append("stderr", "crlf\r")
    log.append("stdout", "y" * (MAX_LINE + 100))
    texts = [x.text for x in log.tail(10)]
    assert texts[:4] == ["started pid 123", "a", "b", "crlf"]
    assert len(texts[4]) == MAX_LINE


@pytest.mark.anyio
async def test_wait_after_wakes_on_a_new_line() -> None:
    log = LogTail(None)
    log.append("stdout", "old")
    with trio.fail_after(1):
        await log.wait_after(0)  # already there: returns at once
    woke: list[int] = []

    async def follower() -> None:
        await log.wait_after(log.last_seq)
        woke.append(log.last_seq)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follower)
        nursery.start_soon(follower)
        await trio.testing.wait_all_tasks_blocked()
        assert woke == []
        log.append("stderr", "new")
    assert woke == [2, 2]


def test_file_lines_and_rotation(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "worker.log"  # the directory is created
    log = LogTail(path, max_bytes=1000, backups=2)
    for i in range(100):
        log.append("stdout", f"line {i:03d} " + "z" * 30)
    log.note("done")
    log.close()
    assert log.file_error is None
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["worker.log", "worker.log.1", "worker.log.2"]
    for name in names:
        assert (path.parent / name).stat().st_size <= 1000
    current = path.read_text().splitlines()
    assert current[-1].split(" ", 2)[1:] == ["supervisor", "done"]
    assert TIME.match(current[-1].split(" ")[0])
    older = (path.parent / "worker.log.1").read_text().splitlines()
    last_old = int(older[-1].split(" ")[3])
    first_new = int(current[0].split(" ")[3])
    assert first_new == last_old + 1  # x.log.1 holds the lines just before x.log


def test_rotation_without_backups_truncates(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    log = LogTail(path, max_bytes=200, backups=0)
    for i in range(50):
        log.append("stdout", f"{i:04d}")
    log.close()
    assert [p.name for p in tmp_path.iterdir()] == ["x.log"]
    assert path.stat().st_size <= 200
    assert path.read_text().splitlines()[-1].endswith(" stdout 0049")


def test_existing_file_is_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_text("from before\n")
    log = LogTail(path)
    log.append("stdout", "now")
    log.close()
    lines = path.read_text().splitlines()
    assert lines[0] == "from before" and lines[1].endswith(" stdout now")


def test_unwritable_directory_keeps_lines_in_memory_and_recovers(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the log directory should be")
    path = blocker / "x.log"
    log = LogTail(path, retry_after=0.0)
    log.append("stdout", "one")
    assert log.file_error is not None and str(path) in log.file_error
    log.append("stdout", "two")
    texts = [x.text for x in log.tail(10)]
    assert texts[0] == "one" and texts[-1] == "two"
    assert "in memory only" in texts[1]
    blocker.unlink()  # the operator fixes it; the next line reopens the file
    log.append("stdout", "three")
    assert log.file_error is None
    lines = path.read_text().splitlines()
    assert "writable again" in lines[0] and lines[1].endswith(" stdout three")
    log.close()


def test_full_disk_sets_file_error_and_never_raises() -> None:
    # /dev/full answers every write with ENOSPC, like a full disk.
    log = LogTail(Path("/dev/full"), retry_after=3600)
    for i in range(3):
        log.append("stdout", f"line {i}")
    assert log.file_error is not None and "No space left" in log.file_error
    assert [x.text for x in log.tail(10) if x.stream == "stdout"] == ["line 0", "line 1", "line 2"]
    log.close()


def test_extend_keeps_many_lines_and_rotates_within_the_size(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    log = LogTail(path, lines=500, max_bytes=2000, backups=1)
    log.append("stdout", "first")
    log.extend("stderr", [f"batch {i:03d}\r" for i in range(100)])
    log.extend("stderr", [])
    assert log.last_seq == 101
    assert [x.text for x in log.since(99)] == ["batch 098", "batch 099"]
    log.close()
    assert path.stat().st_size <= 2000
    assert (tmp_path / "x.log.1").stat().st_size <= 2000
    assert path.read_text().splitlines()[-1].endswith(" stderr batch 099")


def test_a_log_file_moved_away_is_started_anew(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    log = LogTail(path, max_bytes=100, backups=1)
    log.append("stdout", "a" * 60)
    path.rename(tmp_path / "elsewhere.log")  # e.g. logrotate without copytruncate
    log.append("stdout", "b" * 60)  # the open file is the moved one; it rotates
    log.append("stdout", "c" * 60)
    assert log.file_error is None
    log.close()
    assert path.read_text().endswith("c" * 60 + "\n")
