"""The docker plugin's keys, and what it says when no engine answers (no engine needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core import OptionError
from plugins.docker.instance import instance_id
from plugins.docker.options import read_options
from tests.faults.helpers import Core
from tests.plugins.docker_engine import docker_table, free_port, write_config

ROOT = Path(__file__).resolve().parents[2]


def test_defaults() -> None:
    assert read_options({"image": "nginx:1.27"}) == {
        "image": "nginx:1.27", "command": None, "env": {},
        "network": "host", "user": None, "labels": {}, "pull": "missing",
        "mounts": [], "ports": {}}


def test_every_key_normalised() -> None:
    opts = read_options({
        "image": "app", "command": "serve --port 80", "env": {"A": "1"},
        "network": "appnet", "user": "1000:1000", "labels": {"team": "web"},
        "pull": "never",
        "mounts": ["./data:/data", "/etc/app:/etc/app:ro", "cache:/cache",
                   {"type": "tmpfs", "target": "/tmp"},
                   {"source": "/srv", "target": "/srv", "read_only": True}],
        "ports": ["8080:80", "127.0.0.1:8443:443/tcp", "5353:53/udp"]})
    assert opts["command"] == ["serve", "--port", "80"]
    assert opts["mounts"] == [
        {"type": "bind", "source": "./data", "target": "/data", "read_only": False},
        {"type": "bind", "source": "/etc/app", "target": "/etc/app", "read_only": True},
        {"type": "volume", "source": "cache", "target": "/cache", "read_only": False},
        {"type": "tmpfs", "source": "", "target": "/tmp", "read_only": False},
        {"type": "bind", "source": "/srv", "target": "/srv", "read_only": True}]
    assert opts["ports"] == {"80/tcp": 8080, "443/tcp": ("127.0.0.1", 8443), "53/udp": 5353}


@pytest.mark.parametrize(("options", "key", "words"), [
    ({}, "image", "is required"),
    ({"image": 3}, "image", "expected a string"),
    ({"image": " "}, "image", "image name"),
    ({"image": "x", "mount": []}, "mount", "did you mean 'mounts'"),
    ({"image": "x", "command": []}, "command", "non-empty"),
    ({"image": "x", "env": {"A": 1}}, "env.A", "expected a string"),
    ({"image": "x", "network": ""}, "network", "network"),
    ({"image": "x", "mounts": "a:/b"}, "mounts", "an array"),
    ({"image": "x", "mounts": ["nocolon"]}, "mounts[0]", "SOURCE:TARGET"),
    ({"image": "x", "mounts": ["a:/b:rx"]}, "mounts[0]", '"ro" or "rw"'),
    ({"image": "x", "mounts": ["a:b"]}, "mounts[0]", "absolute path"),
    ({"image": "x", "mounts": [{"target": "/b", "kind": "bind"}]}, "mounts[0].kind",
     "unknown key"),
    ({"image": "x", "mounts": [{"target": "/b"}]}, "mounts[0].source", "is required"),
    ({"image": "x", "mounts": [{"source": "/a"}]}, "mounts[0].target", "is required"),
    ({"image": "x", "mounts": [{"type": "nfs", "target": "/b"}]}, "mounts[0].type", "bind"),
    ({"image": "x", "mounts": [{"type": 1, "target": "/b"}]}, "mounts[0].type", "a string"),
    ({"image": "x", "mounts": [3]}, "mounts[0]", "a table"),
    ({"image": "x", "network": "appnet", "ports": "80:80"}, "ports", "an array"),
    ({"image": "x", "network": "appnet", "ports": ["80"]}, "ports[0]", "HOST:CONTAINER"),
    ({"image": "x", "network": "appnet", "ports": ["0:80"]}, "ports[0]", "1 to 65535"),
    ({"image": "x", "ports": ["8080:80"]}, "ports", "network of its own"),
    ({"image": "x", "user": ""}, "user", "user name"),
    ({"image": "x", "labels": {"control-center.component": "y"}},
     "labels.control-center.component", "Control Center itself"),
    ({"image": "x", "pull": "always"}, "pull", "'missing', 'never'"),
])
def test_mistakes_name_the_key(options: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(OptionError) as info:
        read_options(options)
    assert info.value.key == key
    assert words in info.value.message


@pytest.mark.parametrize(("table", "path", "words"), [
    ('image = "x"\nmount = ["a:/b"]', "components.web.mount", "did you mean 'mounts'"),
    ('image = "x"\nmemory_max = [1]', "components.web.memory_max", "a size"),
    ('image = "x"\nports = ["80:80"]', "components.web.ports", "network of its own"),
    ('image = "x"\nrestrat = "always"', "components.web.restrat", "did you mean"),
    ("command = 'sleep 1'", "components.web.image", "is required"),
])
def test_python_m_core_exits_2_naming_the_key(tmp_path: Path, table: str, path: str,
                                              words: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\ndata_dir = "data"\n\n[components.web]\nplugin = "docker"\n'
                      f"{table}\n")
    run = subprocess.run([sys.executable, "-m", "core", "--config", str(config)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run
    assert f"{config}: {path}:" in run.stderr and words in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "data").exists()  # nothing started, nothing written


def test_instance_id_is_made_once_and_kept(tmp_path: Path) -> None:
    first = instance_id(tmp_path / "a")
    assert len(first) == 32 and (tmp_path / "a" / "instance-id").read_text().strip() == first
    assert instance_id(tmp_path / "a") == first
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "instance-id").write_text("not an id\n")
    fixed = instance_id(tmp_path / "b")
    assert fixed != first and (tmp_path / "b" / "instance-id").read_text().strip() == fixed


def test_an_unreachable_engine_is_the_components_error(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    config = write_config(tmp_path, docker_table("web", "busybox", max_failures=1))
    core = Core(config, env={"DOCKER_HOST": f"tcp://127.0.0.1:{port}"})
    try:
        core.wait_ready()
        view = core.wait_state("web", lambda c: c["state"] == "error", 20, "error")
        assert f"cannot reach the Docker engine at tcp://127.0.0.1:{port}" in view["error"]
        assert core.proc.poll() is None  # the supervisor itself carries on
    finally:
        core.close()
