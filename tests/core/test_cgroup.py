"""core.cgroup and the spawn into a cgroup, with real children.

The spawn and stop tests need a cgroup v2 hierarchy where this process may
create cgroups (root, or a delegated subtree) and are skipped elsewhere. The
controller path (cpu.max, memory.max, enabling controllers) cannot run on a
hybrid hierarchy without v2 controllers; it is checked against a directory
of plain files that stands in for cgroupfs: what is written where.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from core import cgroup
from core.config import parse
from core.containment import Containment, size_text
from core.logs import LogTail
from core.process import ChildProcess
from tests import cgroups
from tests.core.helpers_process import alive, py, wait_text
from tests.core.test_process import spawn_path  # noqa: F401  (fixture)


def test_find_mount_in_pure_and_hybrid_layouts(tmp_path: Path) -> None:
    hybrid = tmp_path / "hybrid"
    hybrid.write_text(
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")
    assert cgroup.find_mount(str(hybrid)) == Path("/sys/fs/cgroup/unified")
    pure = tmp_path / "pure"
    pure.write_text("29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n")
    assert cgroup.find_mount(str(pure)) == Path("/sys/fs/cgroup")
    spaced = tmp_path / "spaced"
    spaced.write_text("29 23 0:26 / /mnt/my\\040cg rw - cgroup2 none rw\n")
    assert cgroup.find_mount(str(spaced)) == Path("/mnt/my cg")
    none = tmp_path / "none"
    none.write_text("35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    assert cgroup.find_mount(str(none)) is None
    own = tmp_path / "cgroup"
    own.write_text("4:memory:/x\n0::/system.slice/cc.service\n")
    assert cgroup.own_cgroup(str(own)) == "/system.slice/cc.service"
    own.write_text("4:memory:/x\n")
    assert cgroup.own_cgroup(str(own)) is None


def _stand_in(path: Path, *files: str) -> None:
    """A directory with the interface files the kernel would have made in a cgroup."""
    path.mkdir(parents=True, exist_ok=True)
    for name in files:
        (path / name).touch()


def test_limits_written_where_the_controllers_are(tmp_path: Path) -> None:
    """memory.max and cpu.max of the component's cgroup; the run's leaf beneath it."""
    base = tmp_path / "control-center-x"
    _stand_in(base / "api.2", "memory.max", "cpu.max")
    tree = cgroup.Tree(base, frozenset({"cpu", "memory"}), None)
    leaf = tree.new_run("api.2", 512 * 2**20, 0.5)
    comp = base / "api.2"
    assert leaf.path == comp / "1" and leaf.path.is_dir()
    assert (comp / "memory.max").read_text() == str(512 * 2**20)
    assert (comp / "cpu.max").read_text() == "50000 100000"
    tree.new_run("api.2", None, None)  # a reload dropped the limits
    assert (comp / "memory.max").read_text() == "max"
    assert (comp / "cpu.max").read_text() == "max 100000"
    bare = cgroup.Tree(tmp_path, frozenset(), "no controllers")
    bare.new_run("b", 2**20, 1.0)
    assert not (tmp_path / "b" / "memory.max").exists()


def test_enable_writes_subtree_control(tmp_path: Path) -> None:
    root = tmp_path / "own"
    base = root / "control-center-x"
    _stand_in(root, "cgroup.subtree_control")
    _stand_in(base, "cgroup.subtree_control")
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    assert cgroup._enable(root, base, "/own", "control-center-x") == (
        frozenset({"cpu", "memory"}), None)
    assert (root / "cgroup.subtree_control").read_text() == "+cpu +memory"
    assert (base / "cgroup.subtree_control").read_text() == "+cpu +memory"
    (root / "cgroup.controllers").write_text("hugetlb\n")
    found, why = cgroup._enable(root, base, "/own", "control-center-x")
    assert found == frozenset() and why is not None and "no cpu and no memory" in why


def test_limits_in_the_snapshot_say_who_enforces_them(tmp_path: Path) -> None:
    cfg = parse('[components.a]\nplugin = "process"\ncommand = ["true"]\n'
                'memory_max = "1G"\ncpu_max = 1.5\n', tmp_path / "c.toml").components["a"]
    assert cfg.memory_max == 2**30 and size_text(cfg.memory_max) == "1G"
    none = Containment()
    assert none.kind == "process-group"
    assert none.limits(cfg) == {"memory_max_mb": 1024.0, "memory_max_by": "supervisor",
                                "cpu_max": 1.5, "cpu_max_by": None}
    kernel = Containment(cgroup.Tree(tmp_path, frozenset({"cpu", "memory"}), None), "")
    assert kernel.kind == "cgroup"
    assert kernel.limits(cfg) == {"memory_max_mb": 1024.0, "memory_max_by": "kernel",
                                  "cpu_max": 1.5, "cpu_max_by": "kernel"}
    # Two probes in a row above the limit, not one.
    assert kernel.memory_over("a", 2000.0, cfg.memory_max) is None
    assert kernel.memory_over("a", 10.0, cfg.memory_max) is None
    assert kernel.memory_over("a", 2000.0, cfg.memory_max) is None
    assert "for 2 probes in a row" in (kernel.memory_over("a", 2000.0, cfg.memory_max) or "")


_WHY = cgroups.why_not()


@pytest.fixture
def tree() -> Iterator[cgroup.Tree]:
    if _WHY is not None:
        pytest.skip(f"cgroups cannot be made here: {_WHY}")
    made, _ = cgroup.open_tree(f"control-center-test-{uuid.uuid4().hex[:8]}")
    assert made is not None
    try:
        yield made
    finally:
        made.close()
    assert not made.base.exists()


# Prints its own cgroup first thing, then forks a grandchild that setsid()s,
# ignores SIGTERM and clears its environment.
JOINED = """
import os, signal, sys, time
print(open("/proc/self/cgroup").read().split("0::")[1].strip(), flush=True)
if os.fork() == 0:
    os.setsid()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.execve(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)"], {})
time.sleep(60)
"""


@pytest.mark.anyio
@pytest.mark.usefixtures("spawn_path")
async def test_child_is_in_its_cgroup_before_its_program_runs_and_stop_ends_all(
        tree: cgroup.Tree) -> None:
    leaf = tree.new_run("c", None, None)
    log = LogTail(None)
    async with trio.open_nursery() as n:
        child = await ChildProcess.spawn(n, py(JOINED), cwd=None, env=None, log=log,
                                         cgroup=leaf)
        seen = await wait_text(log, "/")
        assert seen.endswith(f"/{tree.base.name}/c/1")
        with trio.fail_after(10):
            while len(leaf.pids()) < 2:
                await trio.sleep(0.02)
        pids = leaf.pids()
        assert child.pid in pids
        code = await child.stop(signal.SIGTERM, 0.5)
        assert code == -signal.SIGTERM
        assert not any(alive(p) for p in pids)
        assert not leaf.path.exists()  # the run's leaf is removed once empty
        assert tree.group("c").path.exists()  # the component's stays until it is removed


@pytest.mark.anyio
async def test_leftovers_of_a_tree_are_ended_and_removed(tree: cgroup.Tree) -> None:
    import subprocess

    leaf = tree.new_run("old", None, None)
    proc = subprocess.Popen(["sh", "-c", f"echo 0 > {leaf.procs_file}; exec sleep 60"],
                            start_new_session=True)
    with trio.fail_after(10):
        while not leaf.pids():
            await trio.sleep(0.01)
    assert tree.leftovers() == {"old": [proc.pid]}
    assert proc.wait(5) == -signal.SIGKILL
    assert tree.component_ids() == []
