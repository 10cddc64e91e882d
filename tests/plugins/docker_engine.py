"""Fixtures for the docker plugin's tests: a real engine, a busybox image, cores.

The engine is the one DOCKER_HOST names (the local socket by default). When
none answers and this is root on a machine with Debian's docker.io, one is
started the way .ci/run starts it (no bridge, no iptables: containers use
the host's network or none) and stopped again at the end of the session.
The tests skip only when no engine can be had; under CI they fail instead.

There is no image registry here: the test image is `docker import` of a
tarball holding a static /bin/busybox and its applet links.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.faults.helpers import Core, wait_for

#: Every container a test makes carries this label: teardown removes them all.
TEST_LABEL = "cc-test-session"
SESSION = uuid.uuid4().hex[:12]

DOCKERD_FLAGS = ["--bridge=none", "--iptables=false", "--ip-masq=false"]


def _no_engine(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the docker tests, but {reason}", pytrace=False)
    pytest.skip(reason)


def _client() -> Any:
    """A client of the engine if one accepts connections, else None.

    Without DOCKER_HOST, the default socket is tried first with a plain
    connect: docker.from_env() asks the engine its API version as it is
    made, and a failed ask leaves its socket for the GC to find (a
    ResourceWarning in whichever test runs then).
    """
    if not os.environ.get("DOCKER_HOST"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect("/var/run/docker.sock")
            except OSError:
                return None
    with contextlib.suppress(docker.errors.DockerException):
        client = docker.from_env(timeout=30)
        if _ping(client):
            return client
        client.close()
    return None


def _ping(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A client of a live engine; starts dockerd for the session if none answers."""
    started: subprocess.Popen[bytes] | None = None
    client = _client()
    if client is None:
        if os.environ.get("DOCKER_HOST"):
            _no_engine(f"no Docker engine answers at DOCKER_HOST={os.environ['DOCKER_HOST']}")
        dockerd = shutil.which("dockerd")
        if dockerd is None or os.geteuid() != 0:
            _no_engine("no Docker engine answers at /var/run/docker.sock and none can be "
                       "started here (needs root and Debian's docker.io: see .ci/run)")
        log = Path(tempfile.gettempdir()) / f"cc-test-dockerd-{os.getpid()}.log"
        with log.open("wb") as out:
            started = subprocess.Popen([dockerd, *DOCKERD_FLAGS], stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            client = _client()
            if client is not None:
                break
            if started.poll() is not None or time.monotonic() > deadline:
                started.kill()
                _no_engine(f"dockerd did not come up (see {log}):\n"
                           f"{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
    assert client is not None
    try:
        yield client
    finally:
        _remove_test_containers(client)
        client.close()
        if started is not None:
            started.send_signal(signal.SIGTERM)
            try:
                started.wait(30)
            except subprocess.TimeoutExpired:
                started.kill()
                started.wait(10)


def _remove_test_containers(client: Any) -> None:
    for item in client.api.containers(all=True, filters={"label": f"{TEST_LABEL}={SESSION}"}):
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_container(item["Id"], force=True)


def _static_busybox() -> Path:
    path = shutil.which("busybox") or "/bin/busybox"
    found = Path(path)
    if not found.is_file():
        _no_engine("busybox is not installed (Debian's busybox-static: see .ci/run)")
    if _has_interpreter(found):
        _no_engine(f"{found} is linked dynamically; the image needs busybox-static")
    return found


def _has_interpreter(path: Path) -> bool:
    """Whether an ELF file asks for a dynamic loader (a PT_INTERP program header)."""
    data = path.read_bytes()[:65536]
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return True  # not a 64-bit ELF: not something we can put in an image
    phoff = int.from_bytes(data[32:40], "little")
    size, count = int.from_bytes(data[54:56], "little"), int.from_bytes(data[56:58], "little")
    for i in range(count):
        if int.from_bytes(data[phoff + i * size:phoff + i * size + 4], "little") == 3:
            return True
    return False


def busybox_tarball(busybox: Path) -> bytes:
    """A root file system: /bin/busybox, a link per applet, /tmp and /www."""
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("bin", "tmp", "www", "etc"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(busybox), arcname="bin/busybox")
        for applet in applets:
            if applet != "busybox":
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(info)
        for name, text in (("www/index.html", "hello from busybox\n"),
                           ("etc/passwd", "root:x:0:0::/:/bin/sh\n"
                                          "nobody:x:65534:65534::/:/bin/sh\n"),
                           ("etc/group", "root:x:0:\nnogroup:x:65534:\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="session")
def busybox_image(docker_client: Any) -> str:
    """`docker import` of the busybox tarball (made once per busybox binary)."""
    busybox = _static_busybox()
    tag = hashlib.sha256(busybox.read_bytes()).hexdigest()[:12]
    name = f"cc-test-busybox:{tag}"
    with contextlib.suppress(docker.errors.ImageNotFound):
        docker_client.images.get(name)
        return name
    docker_client.api.import_image_from_data(busybox_tarball(busybox),
                                             repository="cc-test-busybox", tag=tag)
    docker_client.images.get(name)
    return name


@pytest.fixture(scope="session")
def health_image(docker_client: Any, busybox_image: str) -> str:
    """The busybox image with a HEALTHCHECK: healthy while /tmp/healthy exists."""
    name = busybox_image.replace("cc-test-busybox:", "cc-test-busybox-health:")
    dockerfile = (f"FROM {busybox_image}\nHEALTHCHECK --interval=1s --timeout=2s --retries=1 "
                  "CMD test -f /tmp/healthy\n").encode()
    # The classic builder needs no registry for a local base; no step runs a container.
    docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag=name, network_mode="none",
                               rm=True)
    return name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml(str(k))} = {toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return repr(value)


def docker_table(cid: str, image: str, **keys: object) -> str:
    """A `[components.<cid>]` table of the docker plugin, labelled for teardown."""
    labels = {TEST_LABEL: SESSION, **dict(keys.pop("labels", {}) or {})}  # type: ignore[call-overload]
    lines = [f"[components.{cid}]", 'plugin = "docker"', f"image = {toml(image)}",
             f"labels = {toml(labels)}"]
    lines += [f"{k} = {toml(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def write_config(base: Path, components: str, **server: object) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    settings: dict[str, object] = {"port": 0, "interval": 0.25, "data_dir": "data",
                                   "log_dir": "logs", "control_rate": 10000.0}
    settings.update(server)
    path = base / "config.toml"
    path.write_text("[server]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in settings.items())
                    + "\n" + components)
    return path


def httpd(port: int, root: str = "/www") -> list[str]:
    """A busybox httpd on 127.0.0.1:`port` that ends on SIGTERM (as PID 1 it would not)."""
    return ["sh", "-c", f"trap 'echo got TERM; exit 0' TERM; echo starting httpd; "
                        f"httpd -f -p 127.0.0.1:{port} -h {root} & wait"]


def http_get(port: int, path: str = "/") -> str | None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.read().decode() if resp.status == 200 else None
    except OSError:
        return None
    finally:
        conn.close()


def containers_of(client: Any, component: str | None = None) -> list[dict[str, Any]]:
    """This session's containers (optionally of one component), as the list API gives them."""
    labels = [f"{TEST_LABEL}={SESSION}"]
    if component is not None:
        labels.append(f"control-center.component={component}")
    return client.api.containers(all=True, filters={"label": labels})


class DockerCores:
    """`python -m core` subprocesses of one test; killed with their runs at teardown."""

    def __init__(self, tmp_path: Path, client: Any) -> None:
        self.tmp_path = tmp_path
        self.client = client
        self.started: list[Core] = []

    def start(self, components: str, *, name: str = "core", ready: bool = True,
              env: dict[str, str] | None = None, **server: object) -> Core:
        config = self.tmp_path / name / "config.toml"
        if not config.exists() or components:
            config = write_config(self.tmp_path / name, components, **server)
        core = Core(config, env=env)
        self.started.append(core)
        return core.wait_ready() if ready else core

    def close(self) -> None:
        for core in self.started:
            core.close()
        _remove_test_containers(self.client)


@pytest.fixture
def docker_cores(tmp_path: Path, docker_client: Any) -> Iterator[DockerCores]:
    cores = DockerCores(tmp_path, docker_client)
    try:
        yield cores
    finally:
        cores.close()


__all__ = ["DockerCores", "busybox_image", "containers_of", "docker_client", "docker_cores",
           "docker_table", "free_port", "health_image", "http_get", "httpd", "toml",
           "wait_for", "write_config"]
