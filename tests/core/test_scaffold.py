"""`python -m core new-plugin`: names, refusals, and a package that passes ruff's basics."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def new_plugin(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", "new-plugin", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_the_package_names_its_entry_point_module_and_distribution(tmp_path: Path) -> None:
    done = new_plugin("disk_watch", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    root = tmp_path / "control-center-disk-watch"
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "control-center-disk-watch"
    assert meta["project"]["entry-points"]["control_center"] == {"disk_watch": "cc_disk_watch"}
    for path in root.rglob("*.py"):
        ast.parse(path.read_text(), filename=str(path))  # valid Python, templates filled
        assert "$" not in path.read_text().replace("$name", ""), path
    assert (root / "tests" / "test_cc_disk_watch.py").is_file()


def test_bad_names_and_existing_directories_are_refused(tmp_path: Path) -> None:
    bad = new_plugin("Echo-Server", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: expected a plugin name of lower-case letters")
    assert new_plugin("echo", cwd=tmp_path).returncode == 0
    again = new_plugin("echo", cwd=tmp_path)
    assert again.returncode == 2 and "exists already" in again.stderr
