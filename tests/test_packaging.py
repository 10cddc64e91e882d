"""The built wheel, installed into a fresh venv, is the whole product: no checkout needed.

One venv per module: `python -m build` makes the sdist and, from it, the
wheel; pip installs the wheel (not editable) into a fresh venv. Then:

- `control-center` (the installed command) serves the page, the static
  files and the API, and runs a reference plugin from site-packages;
- `python -m core new-plugin` scaffolds a plugin package, pip installs it
  (not editable) into the same venv, and the scaffold's own tests pass
  there against a real supervisor.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from core.testing import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def clean_env() -> dict[str, str]:
    """The environment minus anything that would let the checkout leak in."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "VIRTUAL_ENV", "CONTROL_CENTER_TOKEN")}


def run(*argv: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=clean_env(), text=True,
                          capture_output=True, timeout=timeout)
    assert done.returncode == 0, f"{argv}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "build", "--outdir", work / "dist", ROOT, cwd=work, timeout=600)
    wheels = list((work / "dist").glob("control_center-*.whl"))
    assert len(wheels) == 1, wheels
    env_dir = work / "venv"
    run(sys.executable, "-m", "venv", env_dir, cwd=work)
    run(env_dir / "bin" / "python", "-m", "pip", "install", "--quiet", wheels[0], cwd=work,
        timeout=600)
    return env_dir


def get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read()


def test_the_installed_command_serves_the_page_static_files_and_plugins(
        venv: Path, tmp_path: Path) -> None:
    python = venv / "bin" / "python"
    where = run(python, "-c", "import core, plugins; print(core.__file__, plugins.__file__)",
                cwd=tmp_path).stdout.split()
    assert all("site-packages" in p for p in where), where
    reference = run(venv / "bin" / "control-center", "config-reference", cwd=tmp_path).stdout
    assert reference == (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    port, engine = free_port(), free_port()
    (tmp_path / "config.toml").write_text(
        f'[server]\nport = {port}\ninterval = 0.2\n'
        f'[components.storage]\nplugin = "storage"\nport = {engine}\n')
    proc = subprocess.Popen([venv / "bin" / "control-center", "--config", "config.toml"],
                            cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        doc = None
        while time.monotonic() < deadline:
            try:
                doc = json.loads(get(f"http://127.0.0.1:{port}/api/status")[2])
                if doc["components"]["storage"]["health"] == "healthy":
                    break
            except OSError:
                pass
            time.sleep(0.1)
        assert doc is not None and doc["components"]["storage"]["health"] == "healthy", doc
        assert "total_concepts" in doc["components"]["storage"]["metrics"]
        status, kind, page = get(f"http://127.0.0.1:{port}/")
        assert status == 200 and kind.startswith("text/html") and b"<title>" in page
        static = ROOT / "core" / "web" / "static"
        for path in sorted(static.iterdir()):
            status, kind, body = get(f"http://127.0.0.1:{port}/static/{path.name}")
            assert status == 200, path.name
            assert body == path.read_bytes(), f"{path.name} differs from the checkout's"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode(errors="replace")[-2000:]


def test_a_scaffolded_plugin_installs_and_its_tests_pass(venv: Path, tmp_path: Path) -> None:
    python = venv / "bin" / "python"
    made = run(python, "-m", "core", "new-plugin", "echo", "--dir", tmp_path, cwd=tmp_path)
    package = tmp_path / "control-center-echo"
    assert f"created {package}" in made.stdout
    assert (package / "pyproject.toml").is_file()
    run(python, "-m", "pip", "install", "--quiet", f"{package}[test]", cwd=tmp_path,
        timeout=600)
    listing = run(python, "-m", "core", "plugins", cwd=tmp_path).stdout
    assert any(line.split()[:3] == ["echo", "control-center-echo:", "cc_echo"]
               for line in listing.splitlines()), listing
    # Its own tests, from a directory that is not the package: the installed copy runs.
    tests = tmp_path / "tests-copy"
    (package / "tests").rename(tests)
    done = run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", tests, cwd=tmp_path,
               timeout=300)
    assert "2 passed" in done.stdout, done.stdout
