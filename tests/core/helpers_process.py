"""Helpers for tests that start real processes: liveness, waiting for output."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
import trio

from core.logs import LogTail

PY = sys.executable
REPO = Path(__file__).resolve().parents[2]


def py(code: str) -> list[str]:
    return [PY, "-c", code]


def alive(pid: int) -> bool:
    """Running and not a zombie (orphans' zombies may never be reaped here)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    """Poll until none of `pids` is alive; returns those still alive at the end."""
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid in pids if alive(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


async def wait_text(log: LogTail, prefix: str, timeout: float = 10.0) -> str:
    """The first line from the child starting with `prefix` (waits for it)."""
    seq = 0
    with trio.fail_after(timeout):
        while True:
            for line in log.since(seq):
                if line.stream != "supervisor" and line.text.startswith(prefix):
                    return line.text
                seq = line.seq
            await log.wait_after(seq)


def notes(log: LogTail) -> list[str]:
    return [x.text for x in log.tail(1000) if x.stream == "supervisor"]


#: The three ways core.spawn can start a child (see its docstring).
SPAWN_PATHS = ["native", "setpriv", "preexec_fn"]


def choose_spawn_path(name: str) -> tuple[bool | None, bool | None]:
    """core.spawn's (use_native, use_wrapper) for one path; skips where it is missing."""
    import pytest

    from core import spawn

    if name == "native":
        saved = spawn.use_native
        spawn.use_native = None
        try:
            if not spawn._native_works():
                pytest.skip("the native spawner is not built here")
        finally:
            spawn.use_native = saved
        return None, None
    if name == "setpriv":
        if not spawn._wrapper_works():
            pytest.skip("setpriv --pdeathsig is not available here")
        return False, None
    return False, False
