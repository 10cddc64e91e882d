"""Containment through a real `python -m core`: cgroups, leftovers after a crash, memory_max.

The cgroup tests need a cgroup v2 hierarchy in which this process may create
cgroups (root, or a delegated subtree); elsewhere they are skipped, saying
why. The memory_max test runs everywhere: the restart comes from the
supervisor's own measure of the component's whole process tree.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import cgroup
from tests import cgroups
from tests.faults.helpers import SLEEP, Core, component, start, wait_for, write_config

_NO_CGROUPS = cgroups.why_not()
needs_cgroups = pytest.mark.skipif(_NO_CGROUPS is not None,
                                   reason=f"cgroups cannot be made here: {_NO_CGROUPS}")

# The component: a child that double-forks a grandchild which setsid()s, ignores
# SIGTERM, clears its environment (no marker left) and writes its pid to a file.
# On start it first says whether the grandchild of the previous run still lives.
ESCAPER = """
import os, signal, sys, time
path = os.environ["GC_PIDFILE"]
if os.path.exists(path):
    old = int(open(path).read())
    try:
        state = open(f"/proc/{old}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        state = "gone"
    print("previous grandchild", old, "alive" if state not in ("gone", "Z") else "gone",
          flush=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        code = f"import os, time; open({path!r} + '.tmp', 'w').write(str(os.getpid())); " \\
               f"os.rename({path!r} + '.tmp', {path!r}); time.sleep(600)"
        os.execve(sys.executable, [sys.executable, "-c", code], {})
    os._exit(0)
time.sleep(600)
"""


@pytest.fixture
def pidfile(tmp_path: Path) -> Iterator[Path]:
    """Where the grandchild writes its pid; it is killed at teardown if a test left it."""
    path = tmp_path / "gc.pid"
    yield path
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(path.read_text()), signal.SIGKILL)


def escaper(cid: str, pidfile: Path, **keys: object) -> str:
    return component(cid, ESCAPER, env={"GC_PIDFILE": str(pidfile)}, **keys)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cgroup_of(pid: int) -> Path:
    """The directory of the v2 cgroup `pid` is in."""
    mount = cgroup.find_mount()
    assert mount is not None
    with open(f"/proc/{pid}/cgroup") as f:
        own = next(line[3:].strip() for line in f if line.startswith("0::"))
    return mount / own.lstrip("/")


def grandchild(pidfile: Path, after: int | None = None) -> int:
    def read() -> int | None:
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text())
            return pid if pid != after else None
        return None

    return wait_for(read, 15, "the grandchild's pid")


@needs_cgroups
def test_stop_ends_a_setsid_grandchild_with_a_cleared_environment(
        tmp_path: Path, cores: list[Core], pidfile: Path) -> None:
    core = start(cores, write_config(tmp_path, escaper("esc", pidfile, stop_timeout=1.0)))
    pid = core.running_pids()["esc"]
    gc = grandchild(pidfile)
    assert os.getsid(gc) not in (os.getsid(pid), pid)
    with open(f"/proc/{gc}/environ", "rb") as f:
        assert f.read() == b""  # nothing to recognise it by but its cgroup
    view = core.comp("esc")
    assert view["containment"] == "cgroup"
    leaf = cgroup_of(gc)
    assert leaf == cgroup_of(pid) and leaf.parent.name == "esc"
    core.post("/api/components/esc/stop")
    core.wait_state("esc", lambda v: v["state"] == "stopped", 10, "stopped")
    assert not alive(gc) and not alive(pid)
    assert not leaf.exists()  # the run's leaf is gone with the run
    core.signal(signal.SIGTERM)
    assert core.wait_exit(15) == 0
    assert not leaf.parent.exists() and not leaf.parent.parent.exists()


@needs_cgroups
def test_next_start_ends_a_crashed_runs_grandchild_before_new_children(
        tmp_path: Path, cores: list[Core], pidfile: Path) -> None:
    config = write_config(tmp_path, escaper("esc", pidfile) + component("other", SLEEP))
    first = start(cores, config)
    first.running_pids()
    gc = grandchild(pidfile)
    first.proc.kill()
    first.proc.wait(5)
    wait_for(lambda: first.leftovers() == [], 5, "the marked children to die")
    assert alive(gc)  # no death signal, no marker, no session: only its cgroup
    second = start(cores, config)
    second.running_pids()
    says = wait_for(lambda: [x["text"] for x in second.get("/api/components/esc/logs")[
        "lines"] if x["text"].startswith("previous grandchild")], 10, "the new child's check")
    assert says == [f"previous grandchild {gc} gone"]
    assert not alive(gc)
    ended = [x for x in second.stderr().splitlines() if "ended a leftover" in x]
    assert len(ended) == 1 and "cgroup of esc" in ended[0] and str(gc) in ended[0], ended
    second.signal(signal.SIGTERM)
    assert second.wait_exit(15) == 0


# A leader that sleeps, and a child of it that spins and holds 120 MB.
HOG = """
import os, time
if os.fork() == 0:
    block = b"x" * (120 << 20)
    end = time.monotonic() + 600
    while time.monotonic() < end:
        pass
    os._exit(0)
time.sleep(600)
"""


@needs_cgroups
def test_figures_count_the_whole_tree_and_removal_removes_the_cgroup(
        tmp_path: Path, cores: list[Core]) -> None:
    config = write_config(tmp_path, component("hog", HOG) + component("keep", SLEEP))
    core = start(cores, config)
    pid = core.running_pids()["hog"]
    group = cgroup_of(pid).parent
    # The leader alone holds ~10 MB and no CPU: these figures are its child's.
    view = core.wait_state("hog", lambda v: (v["memory_mb"] or 0) > 100
                           and (v["cpu_percent"] or 0) > 5, 15, "the tree's figures")
    assert view["containment"] == "cgroup"
    config.write_text(config.read_text().split("[components.hog]")[0]
                      + component("keep", SLEEP))
    core.post("/api/reload")
    wait_for(lambda: not group.exists(), 10, f"{group} to be removed")
    assert not alive(pid)
    keep = cgroup_of(core.running_pids()["keep"]).parent
    core.signal(signal.SIGTERM)
    assert core.wait_exit(15) == 0
    assert not keep.exists() and not keep.parent.exists()


def test_process_groups_when_cgroups_are_off(tmp_path: Path, cores: list[Core]) -> None:
    config = write_config(tmp_path, component("a", SLEEP, cpu_max=0.5),
                          server="cgroups = false")
    core = start(cores, config)
    pid = core.running_pids()["a"]
    view = core.comp("a")
    assert view["containment"] == "process-group"
    assert view["limits"] == {"cpu_max": 0.5, "cpu_max_by": None}
    err = core.stderr()
    assert err.count("cgroups are not used: [server] cgroups = false") == 1, err
    assert err.count("cpu_max: not enforced") == 1, err
    with open(f"/proc/{pid}/cgroup") as f:
        assert "control-center-" not in f.read()
    core.signal(signal.SIGTERM)
    assert core.wait_exit(15) == 0


# A leader of ~10 MB whose grandchild grows past memory_max after a moment.
GROWER = """
import os, sys, time
print("run", flush=True)
if os.fork() == 0:
    time.sleep(0.3)
    block = b"x" * (150 << 20)
    time.sleep(600)
time.sleep(600)
"""


@pytest.mark.parametrize("cgroups", [True, False], ids=["default", "process-groups"])
def test_a_tree_above_memory_max_is_restarted_with_the_reason(
        tmp_path: Path, cores: list[Core], cgroups: bool) -> None:
    config = write_config(tmp_path, component("grow", GROWER, memory_max="64M"),
                          server="" if cgroups else "cgroups = false")
    core = start(cores, config)
    first = core.running_pids()["grow"]
    view = core.wait_state("grow", lambda v: v["restarts"] >= 1 and v["pid"] not in (
        None, first), 20, "a restart for memory_max")
    assert "above memory_max = 64M for 2 probes in a row: restarted" in view["error"], view
    assert view["limits"]["memory_max_mb"] == 64.0
    assert any("above memory_max = 64M" in n for n in core.notes("grow"))
    assert "WARNING grow: memory" in core.stderr()
    assert not alive(first)
    core.signal(signal.SIGTERM)
    assert core.wait_exit(15) == 0


@pytest.mark.parametrize("key, value, expected", [
    ("memory_max", '"lots"', 'expected a size such as "512M"'),
    ("memory_max", '"100K"', "expected at least 1M"),
    ("cpu_max", "0", "expected a number from 0.01 to 1024"),
    ("cpu_max", '"half"', "expected a number"),
])
def test_bad_limits_are_config_errors(tmp_path: Path, key: str, value: str,
                                      expected: str) -> None:
    import subprocess

    config = write_config(tmp_path, component("a", SLEEP) + f"{key} = {value}\n")
    done = subprocess.run([sys.executable, "-m", "core", "--config", str(config)],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert done.returncode == 2
    assert f"components.a.{key}: {expected}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
