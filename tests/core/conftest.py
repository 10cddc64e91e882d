"""Fixtures for supervisor tests: real configs in a temp dir, real child processes."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import psutil
import pytest

from core.config import Config, load
from core.plugins import PluginManager

PY = sys.executable


def sleeper(seconds: float = 60) -> str:
    return f'["{PY}", "-c", "import time; time.sleep({seconds})"]'


def write_config(tmp_path: Path, body: str, *, interval: float = 0.2) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f"[server]\nport = 0\ninterval = {interval}\n\n{body}")
    return path


def make_config(tmp_path: Path, body: str, plugins: PluginManager, *,
                interval: float = 0.2) -> Config:
    path = write_config(tmp_path, body, interval=interval)
    return load(path, plugins=plugins.names, validate=plugins.validate)


def make_plugins(extra: Mapping[str, object] | None = None) -> PluginManager:
    return PluginManager(load_entry_points=False, extra=extra)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def plugins() -> PluginManager:
    return make_plugins()


@pytest.fixture(autouse=True)
def _no_leaked_children():
    """Every test must leave no child process of ours behind."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    leaked = [p for p in psutil.Process().children(recursive=True)
              if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE]
    for p in leaked:
        try:
            os.kill(p.pid, 9)
        except ProcessLookupError:
            pass
    assert not leaked, f"leaked processes: {[(p.pid, p.cmdline()) for p in leaked]}"
