"""The docker plugin against a real engine, through a real `python -m core`.

Containers run a static busybox (`docker import`, no registry) with the host
network on 127.0.0.1; every one is labelled for this test session and
removed at teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.plugins.docker_engine import (
    SESSION,
    TEST_LABEL,
    DockerCores,
    busybox_image,
    containers_of,
    docker_client,
    docker_cores,
    docker_table,
    free_port,
    health_image,
    http_get,
    httpd,
    wait_for,
)

pytestmark = pytest.mark.docker

# Fixtures used by name below (imported so that pytest finds them in this module).
__all__ = ["busybox_image", "docker_client", "docker_cores", "health_image"]


def lines(core: Any, cid: str, n: int = 5000) -> list[tuple[str, str]]:
    found = core.get(f"/api/components/{cid}/logs?lines={n}")["lines"]
    return [(x["stream"], x["text"]) for x in found]


def running(core: Any, cid: str, timeout: float = 20.0) -> dict[str, Any]:
    return core.wait_state(cid, lambda c: c["state"] == "running" and c["health"] == "healthy",
                           timeout, "running and healthy")


def one_container(client: Any, cid: str) -> dict[str, Any]:
    found = wait_for(lambda: [c for c in containers_of(client, cid) if c["State"] == "running"],
                     15, f"a running container of {cid}")
    assert len(found) == 1, found
    return found[0]


def test_start_serves_then_stop_removes_the_container(
        docker_cores: DockerCores, docker_client: Any, busybox_image: str) -> None:
    port = free_port()
    core = docker_cores.start(docker_table("web", busybox_image, command=httpd(port),
                                           stop_timeout=5))
    view = running(core, "web")
    assert view["plugin"] == "docker" and view["pid"]
    assert wait_for(lambda: http_get(port), 10, "the container's httpd") == "hello from busybox\n"
    item = one_container(docker_client, "web")
    info = docker_client.api.inspect_container(item["Id"])
    instance = (core.config.parent / "data" / "instance-id").read_text().strip()
    labels = info["Config"]["Labels"]
    assert labels["control-center.component"] == "web"
    assert labels["control-center.instance"] == instance
    assert labels[TEST_LABEL] == SESSION
    assert info["HostConfig"]["RestartPolicy"]["Name"] == "no"
    assert info["HostConfig"]["NetworkMode"] == "host"

    began = time.monotonic()
    core.post("/api/components/web/stop")
    core.wait_state("web", lambda c: c["state"] == "stopped", 10, "stopped")
    took = time.monotonic() - began
    assert took < 5 + 2, f"the stop took {took:.1f} s with stop_timeout 5"
    assert containers_of(docker_client, "web") == []
    assert http_get(port) is None
    # The container going away during the stop is not a health problem.
    assert not [n for n in core.notes("web") if "unhealthy" in n], core.notes("web")
    log = lines(core, "web")
    assert ("stdout", "starting httpd") in log
    assert ("stdout", "got TERM") in log  # docker stop's SIGTERM reached the container
    notes = core.notes("web")
    states = ("stopped", "starting", "running", "stopping", "error")
    assert [n for n in notes if n.split(" -> ")[0] in states][-2:] == [
        "running -> stopping: stop requested", "stopping -> stopped: stopped (exited with "
                                               "status 0)"]

    core.post("/api/components/web/start")
    running(core, "web")
    assert wait_for(lambda: http_get(port), 10, "httpd after start") == "hello from busybox\n"
    second = one_container(docker_client, "web")
    assert second["Id"] != item["Id"]

    core.post("/api/components/web/restart")
    core.wait_state("web", lambda c: c["restarts"] == 1 and c["state"] == "running"
                    and c["health"] == "healthy", 20, "restarted")
    assert one_container(docker_client, "web")["Id"] not in (item["Id"], second["Id"])
    assert wait_for(lambda: http_get(port), 10, "httpd after restart") == "hello from busybox\n"


def test_a_stop_right_after_the_start_still_removes_the_container(
        docker_cores: DockerCores, docker_client: Any, busybox_image: str) -> None:
    core = docker_cores.start(docker_table("quick", busybox_image, autostart=False,
                                           command=httpd(free_port())))
    for _ in range(3):
        core.post("/api/components/quick/start")
        core.wait_state("quick", lambda c: c["state"] == "running", 15, "running")
        core.post("/api/components/quick/stop")  # within milliseconds of the spawn
        view = core.wait_state("quick", lambda c: c["state"] == "stopped", 15, "stopped")
        assert view["exit_code"] == 0, core.notes("quick")
        assert containers_of(docker_client, "quick") == []


def test_a_killed_container_is_restarted_by_the_core(
        docker_cores: DockerCores, docker_client: Any, busybox_image: str) -> None:
    port = free_port()
    core = docker_cores.start(docker_table("web", busybox_image, command=httpd(port),
                                           backoff_initial=0.1))
    running(core, "web")
    first = one_container(docker_client, "web")
    docker_client.api.kill(first["Id"])
    view = core.wait_state("web", lambda c: c["restarts"] == 1 and c["state"] == "running"
                           and c["health"] == "healthy", 20, "restarted")
    assert view["exit_code"] is None
    second = one_container(docker_client, "web")
    assert second["Id"] != first["Id"]
    assert wait_for(lambda: http_get(port), 10, "httpd after the restart")
    # The killed one is gone, not left exited beside the new one.
    assert [c["Id"] for c in containers_of(docker_client, "web")] == [second["Id"]]
    notes = core.notes("web")
    assert "exited with status 137" in notes


def test_probe_reports_the_container_figures_not_the_followers(
        docker_cores: DockerCores, docker_client: Any, busybox_image: str) -> None:
    # About 40 MB held by the shell, and a CPU burner for 4 s.
    command = ["sh", "-c", "x=$(head -c 40000000 /dev/zero | tr '\\0' a); "
                           "timeout 4 sh -c 'while :; do :; done'; sleep 600"]
    core = docker_cores.start(docker_table("hog", busybox_image, command=command,
                                           memory_max="256M")
                              + docker_table("idle", busybox_image, command=["sleep", "600"]))
    running(core, "hog")
    # A sleeping busybox holds well under a megabyte; the Python follower tens of them
    # (its figure is the one shown until the first probe's answer).
    idle = core.wait_state("idle", lambda c: (c["memory_mb"] or 99) < 5, 15,
                           "the container's memory figure")
    assert psutil.Process(idle["pid"]).memory_info().rss / 2**20 > 10
    busy = core.wait_state("hog", lambda c: (c["cpu_percent"] or 0) > 10, 15,
                           "the container's CPU burner to show")
    assert busy["memory_mb"] is not None
    core.wait_state("hog", lambda c: (c["memory_mb"] or 0) > 30, 15,
                    "the container's memory to show")
    item = one_container(docker_client, "hog")
    assert docker_client.api.inspect_container(item["Id"])["HostConfig"]["Memory"] == 256 * 2**20
    after = core.wait_state("hog", lambda c: c["cpu_percent"] is not None
                            and c["cpu_percent"] < 5, 20, "the CPU figure to drop after 4 s")
    assert after["state"] == "running"


def test_docker_health_status_is_the_components_health(
        docker_cores: DockerCores, docker_client: Any, health_image: str) -> None:
    core = docker_cores.start(docker_table("h", health_image, command=["sleep", "600"],
                                           start_timeout=3))
    view = core.wait_state("h", lambda c: c["state"] == "running"
                           and c["health"] == "unhealthy", 20, "unhealthy (no /tmp/healthy)")
    assert "Docker health check" in view["error"]
    item = one_container(docker_client, "h")
    run = docker_client.api.exec_create(item["Id"], ["touch", "/tmp/healthy"])
    docker_client.api.exec_start(run["Id"])
    view = core.wait_state("h", lambda c: c["health"] == "healthy", 20, "healthy")
    assert view["error"] is None and view["restarts"] == 0


def test_output_is_drained_into_the_log_tail_and_rotated_file(
        docker_cores: DockerCores, docker_client: Any, busybox_image: str) -> None:
    count = 2000  # both streams fit in the tail (the logs endpoint gives 5,000 lines at most)
    command = ["sh", "-c", f"i=0; while [ $i -lt {count} ]; do echo \"out $i\"; "
                           f"echo \"err $i\" >&2; i=$((i+1)); done; printf 'no newline'; "
                           "trap 'exit 0' TERM; sleep 600 & wait"]
    core = docker_cores.start(docker_table("chatty", busybox_image, command=command),
                              log_max_bytes=8192, log_backups=2, log_lines=10000)
    running(core, "chatty")
    wait_for(lambda: ("stderr", f"err {count - 1}") in lines(core, "chatty"), 20,
             "the last stderr line in the tail")
    log = lines(core, "chatty")
    outs = [t for s, t in log if s == "stdout" and t.startswith("out ")]
    errs = [t for s, t in log if s == "stderr" and t.startswith("err ")]
    assert outs == [f"out {i}" for i in range(count)]
    assert errs == [f"err {i}" for i in range(count)]
    logs = core.config.parent / "logs"
    assert (logs / "chatty.log").is_file() and (logs / "chatty.log.1").is_file()
    assert all(p.stat().st_size <= 8192 for p in logs.glob("chatty.log*"))
    # The files, oldest first, are the tail's last lines in order: nothing lost at a rotation.
    text = "".join((logs / name).read_text() for name in ("chatty.log.2", "chatty.log.1",
                                                          "chatty.log"))
    on_disk = [tuple(line.split(" ", 2)[1:]) for line in text.splitlines()]
    assert len(on_disk) > 100
    assert on_disk == lines(core, "chatty")[-len(on_disk):]
    # The last, unterminated line arrives when the container ends.
    core.post("/api/components/chatty/stop")
    core.wait_state("chatty", lambda c: c["state"] == "stopped", 15, "stopped")
    assert ("stdout", "no newline") in lines(core, "chatty")


def test_leftovers_of_a_killed_supervisor_are_removed_at_the_next_start(
        docker_cores: DockerCores, docker_client: Any, busybox_image: str) -> None:
    tables = (docker_table("a", busybox_image, command=["sleep", "600"])
              + docker_table("b", busybox_image, command=["sleep", "600"]))
    first = docker_cores.start(tables, name="site")
    running(first, "a")
    running(first, "b")
    old = {cid: one_container(docker_client, cid)["Id"] for cid in ("a", "b")}
    first.signal(signal.SIGKILL)
    first.wait_exit(10)
    # The followers die with the supervisor (death signal); the containers do not.
    still = {c["Id"] for c in containers_of(docker_client) if c["State"] == "running"}
    assert set(old.values()) <= still
    # The next run knows only "a": b's container is an earlier run's all the same.
    (first.config).write_text(first.config.read_text().split("[components.b]")[0])
    second = docker_cores.start("", name="site")
    running(second, "a")
    wait_for(lambda: not {c["Id"] for c in containers_of(docker_client)} & set(old.values()),
             10, "the old containers to be removed")
    assert len(containers_of(docker_client, "a")) == 1
    assert containers_of(docker_client, "b") == []
    def notes() -> list[str]:
        found = [t for s, t in lines(second, "a") if "removed container" in t]
        return found if len(found) >= 2 else []

    removed = wait_for(notes, 10, "the follower's notes of what was removed")
    assert any("'a'" in t and "earlier run" in t for t in removed), removed
    assert any("'b'" in t and "earlier run" in t for t in removed), removed


def test_keys_reach_the_container(docker_cores: DockerCores, docker_client: Any,
                                  busybox_image: str, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("mounted\n")
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "app.env").write_text("FROM_FILE=file\nBOTH=file\n# comment\n")
    port = free_port()
    core = docker_cores.start(docker_table(
        "keys", busybox_image, command=httpd(port, root="/site"), user="65534:65534",
        env={"BOTH": "env", "ONLY_ENV": "yes"}, env_file="app.env",
        mounts=[f"{site}:/site:ro", {"type": "tmpfs", "target": "/scratch"}],
        labels={"team": "web"}))
    running(core, "keys")
    assert wait_for(lambda: http_get(port), 10, "httpd over the bind mount") == "mounted\n"
    info = docker_client.api.inspect_container(one_container(docker_client, "keys")["Id"])
    env = dict(e.split("=", 1) for e in info["Config"]["Env"])
    assert env["FROM_FILE"] == "file" and env["BOTH"] == "env" and env["ONLY_ENV"] == "yes"
    assert info["Config"]["User"] == "65534:65534"
    assert info["Config"]["Labels"]["team"] == "web"
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert mounts["/site"]["RW"] is False and mounts["/site"]["Source"] == str(site)
    assert {"Type": "tmpfs", "Target": "/scratch"}.items() <= next(
        m for m in info["HostConfig"]["Mounts"] if m["Target"] == "/scratch").items()


def test_a_container_that_ignores_sigterm_is_killed_within_stop_timeout(
        docker_cores: DockerCores, docker_client: Any, busybox_image: str) -> None:
    port = free_port()
    # httpd as PID 1 has no SIGTERM handler: only the kill ends it.
    core = docker_cores.start(docker_table("stubborn", busybox_image, stop_timeout=2,
                                           command=["httpd", "-f", "-p", f"127.0.0.1:{port}",
                                                    "-h", "/www"]))
    running(core, "stubborn")
    began = time.monotonic()
    core.post("/api/components/stubborn/stop")
    core.wait_state("stubborn", lambda c: c["state"] == "stopped", 10, "stopped")
    took = time.monotonic() - began
    assert 0.8 < took < 2 + 2, took
    assert containers_of(docker_client, "stubborn") == []
    assert core.comp("stubborn")["exit_code"] == 137


def test_stop_signal_other_than_sigterm_reaches_the_container(
        docker_cores: DockerCores, docker_client: Any, busybox_image: str) -> None:
    command = ["sh", "-c", "trap 'echo got USR1; exit 3' USR1; trap '' TERM; "
                           "sleep 600 & wait"]
    core = docker_cores.start(docker_table("sig", busybox_image, command=command,
                                           stop_signal="SIGUSR1", stop_timeout=5))
    running(core, "sig")
    core.post("/api/components/sig/stop")
    view = core.wait_state("sig", lambda c: c["state"] == "stopped", 10, "stopped")
    assert ("stdout", "got USR1") in lines(core, "sig")
    assert view["exit_code"] == 3
    assert containers_of(docker_client, "sig") == []


def test_the_engine_refusing_is_the_components_error(
        docker_cores: DockerCores, busybox_image: str) -> None:
    core = docker_cores.start(
        docker_table("noimage", "cc-test-no-such-image:1", pull="never", max_failures=1)
        + docker_table("badcmd", busybox_image, command=["/no/such/program"], max_failures=1))
    view = core.wait_state("noimage", lambda c: c["state"] == "error", 15, "error")
    assert "cc-test-no-such-image:1" in view["error"] and "not on the engine" in view["error"]
    view = core.wait_state("badcmd", lambda c: c["state"] == "error", 15, "error")
    assert "/no/such/program" in view["error"], view["error"]


def test_shutdown_stops_and_removes_every_container(
        docker_cores: DockerCores, docker_client: Any, busybox_image: str) -> None:
    core = docker_cores.start("".join(
        docker_table(f"c{i}", busybox_image, command=["sh", "-c", "trap 'exit 0' TERM; "
                                                      "sleep 600 & wait"]) for i in range(3)))
    for i in range(3):
        running(core, f"c{i}")
    assert len(containers_of(docker_client)) == 3
    core.signal(signal.SIGTERM)
    assert core.wait_exit(20) == 0
    assert containers_of(docker_client) == []
    assert not any(p.is_running() for p in core.leftovers())
    assert os.path.exists(core.config.parent / "data" / "instance-id")


def test_the_follower_outlives_its_wait_requests(docker_client: Any, busybox_image: str) -> None:
    """A wait request that ends after WAIT_CHUNK is not a lost engine (here 1 s, not 1 h)."""
    made = docker_client.api.create_container(
        busybox_image, command=["sh", "-c", "trap 'exit 0' TERM; echo up; sleep 600 & wait"],
        labels={TEST_LABEL: SESSION},
        host_config=docker_client.api.create_host_config(network_mode="none"))
    docker_client.api.start(made["Id"])
    code = ("import sys; sys.path.insert(0, 'plugins/docker'); import follow; "
            "follow.WAIT_CHUNK = 1; follow.RECONNECTS = 1; sys.exit(follow.main(sys.argv[1:]))")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", code, made["Id"], "--grace", "1"], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(4.5)  # four wait requests ended meanwhile
        assert proc.poll() is None, proc.communicate()
        wait_for(lambda: _catches_term(proc.pid), 10, "the follower's handlers")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, err
    assert out == b"up\n"
    assert b"docker stop" in err
    assert containers_of(docker_client) == []


def _catches_term(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False
