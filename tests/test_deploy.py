"""contrib/: the systemd unit says what docs/deploy.md promises, and its config is valid."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "contrib" / "control-center.service"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key, []).append(value)
    return settings


def test_the_unit_stops_restarts_and_runs_as_promised() -> None:
    s = unit_settings()
    assert s["KillMode"] == ["mixed"]
    assert s["Delegate"] == ["yes"]
    assert s["Restart"] == ["on-failure"]
    assert s["User"] != ["root"] and s["User"] == ["control-center"]
    assert s["LoadCredential"] == ["token:/etc/control-center/token"]
    assert int(s["TimeoutStopSec"][0]) >= 30
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["ExecStart"][0].split()[:1] == ["/opt/control-center/bin/control-center"]


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (Debian: apt-get install systemd)"
    command = Path(sys.executable).parent / "control-center"
    assert command.exists(), "the control-center command is not installed in this venv"
    unit = tmp_path / "control-center.service"
    unit.write_text(UNIT.read_text().replace("/opt/control-center/bin/control-center",
                                             str(command)))
    done = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=60)
    problems = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    assert done.returncode == 0 and problems == [], problems


def test_the_contrib_config_is_valid_with_the_credential(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "core", "check",
                           str(ROOT / "contrib" / "config.toml")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    missing = subprocess.run([sys.executable, "-m", "core", "check",
                              str(ROOT / "contrib" / "config.toml")],
                             env={**env, "CREDENTIALS_DIRECTORY": str(tmp_path / "none")},
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "server.token_file: cannot read" in missing.stderr
