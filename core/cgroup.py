"""cgroup v2: one cgroup per component under the supervisor's own, read and ended as a whole.

Layout, under the cgroup this process is in (`0::/path` of /proc/self/cgroup)
on the v2 mount found in /proc/self/mountinfo:

    <own>/control-center-<instance>/          the tree of one supervisor
        <component id>/                       limits (memory.max, cpu.max), figures
            <n>/                              one run: the child joins it before exec

<instance> is the id kept in the data directory (core.remotes.instance_id),
the same identity the run record and its lock go by (core.leftovers): two
supervisors on one machine have two trees, and the next start of the same
one finds the tree a crashed run left. Each run has its own leaf so that the
leftovers of a child that exited on its own can be ended while its successor
already runs beside them, in the component's cgroup.

The kernel lets a cgroup that enables controllers for its children hold no
process itself (except the root): to enable cpu/memory under <own>, the
supervisor first moves itself into the leaf `<own>/control-center-<instance>.supervisor`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import time
from pathlib import Path

from core.kept import KeptFiles, read_once

#: The controllers a component's limits and figures use, where the kernel has them.
WANTED = ("cpu", "memory")
#: cpu.max's period, in microseconds (the kernel's default).
CPU_PERIOD = 100_000
#: How long remove() waits for a killed cgroup to empty.
EMPTY_WAIT = 5.0

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _unescape(text: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \040 and the like.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def find_mount(mountinfo: str = "/proc/self/mountinfo") -> Path | None:
    """Where the unified (v2) hierarchy is mounted: /sys/fs/cgroup, .../unified, or None."""
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return Path(_unescape(left.split()[4]))
    return None


def own_cgroup(path: str = "/proc/self/cgroup") -> str | None:
    """This process's v2 cgroup path ("/" for the root), or None."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


def _read(path: Path) -> str:
    with open(path) as f:
        return f.read()


def _write(path: Path, text: str) -> None:
    # O_TRUNC as a shell's ">" does: cgroupfs ignores it.
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def usage_usec(cpu_stat: bytes) -> int | None:
    """usage_usec, the first line of a cgroup's cpu.stat."""
    first = cpu_stat.split(b"\n", 1)[0].split()
    return int(first[1]) if len(first) == 2 and first[0] == b"usage_usec" else None


def _pids(path: Path | str) -> list[int]:
    try:
        return [int(x) for x in read_once(f"{path}/cgroup.procs").split()]
    except (OSError, ValueError):
        return []


def _keyed(path: Path, name: str) -> dict[str, int]:
    """A flat keyed file (cpu.stat, memory.events, cgroup.events) as {key: int}."""
    out = {}
    with contextlib.suppress(OSError):
        for line in _read(path / name).splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[key] = int(value)
    return out


def _tree_pids(path: str) -> list[int]:
    found = _pids(path)
    with contextlib.suppress(OSError):
        for entry in os.scandir(path):
            if entry.is_dir(follow_symlinks=False):
                found += _tree_pids(entry.path)
    return found


def rss_bytes(pids: list[int]) -> int:
    """Resident memory of these processes together (statm; gone ones count 0)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(read_once(f"/proc/{pid}/statm").split()[1]) * _PAGE
    return total


class Group:
    """One cgroup directory: its processes, its figures, kill, remove."""

    def __init__(self, path: Path) -> None:
        self.path = path
        #: The file a child writes its pid into to join (core.spawn).
        self.procs_file = str(path / "cgroup.procs")
        self._cpu_stat = str(path / "cpu.stat")
        self._memory_current = str(path / "memory.current")

    def __repr__(self) -> str:
        return f"<cgroup {self.path}>"

    def pids(self) -> list[int]:
        """Every process in this cgroup and the cgroups below it."""
        return _tree_pids(str(self.path))

    def populated(self) -> bool:
        events = _keyed(self.path, "cgroup.events")
        return events.get("populated", 0) == 1 if events else bool(self.pids())

    def kill(self) -> None:
        """SIGKILL everything in it and below, forks in flight included (cgroup.kill)."""
        try:
            _write(self.path / "cgroup.kill", "1")
            return
        except FileNotFoundError:
            if not self.path.is_dir():
                return
        except OSError:
            pass
        # Before Linux 5.14: freeze (no fork gets through), kill each, thaw.
        frozen = False
        with contextlib.suppress(OSError):
            _write(self.path / "cgroup.freeze", "1")
            frozen = True
        for _ in range(10):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        if frozen:
            with contextlib.suppress(OSError):
                _write(self.path / "cgroup.freeze", "0")

    def wait_empty(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.populated():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def remove(self) -> bool:
        """rmdir it and what is below it (each must be empty); False if something stays."""
        ok = True
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.path):
                if entry.is_dir(follow_symlinks=False):
                    ok = Group(Path(entry.path)).remove() and ok
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            pass
        except OSError:
            return False
        return ok

    def end(self, timeout: float = EMPTY_WAIT) -> bool:
        """kill, wait until empty, remove: True once it is gone."""
        if not self.path.is_dir():
            return True
        if self.populated():
            self.kill()
            self.wait_empty(timeout)
        return self.remove()

    def figure_texts(self, controller: bool, run: Group | None,
                     files: KeptFiles) -> tuple[bytes | None, bytes | None]:
        """What the figures are read from: cpu.stat, and memory.current (with
        the memory controller) or the cgroup.procs of `run`; None where it
        cannot be read. Unchanged texts mean unchanged figures."""
        try:
            cpu: bytes | None = files.read(self._cpu_stat)
        except OSError:
            cpu = None
        path = self._memory_path(controller, run)
        memory = None
        if path is not None:
            with contextlib.suppress(OSError):
                memory = files.read(path)
        return cpu, memory

    def keep_figure_files(self, controller: bool, run: Group | None, files: KeptFiles) -> None:
        """Keep figure_texts()'s files open through a tick that did not read them."""
        files.keep(self._cpu_stat)
        path = self._memory_path(controller, run)
        if path is not None:
            files.keep(path)

    def _memory_path(self, controller: bool, run: Group | None) -> str | None:
        """What the memory figure is read from: memory.current, or the run's cgroup.procs."""
        if controller:
            return self._memory_current
        return run.procs_file if run is not None else None

    def memory_bytes(self, controller: bool, text: bytes | None,
                     leader: tuple[int, int] | None = None, run: Group | None = None) -> int:
        """memory.current with the memory controller; else the RSS of its processes.

        `text`: as figure_texts read it. `leader`: (pid, bytes) already read
        this tick, not read again; `run`: count only the processes of this
        run's cgroup (their list is `text`, no scan).
        """
        if controller and text is not None:
            with contextlib.suppress(ValueError):
                return int(text)
        if run is None:
            pids = self.pids()
        elif text is not None and not controller:
            pids = [int(x) for x in text.split()]
        else:
            pids = _pids(run.path)
        if leader is None or leader[0] not in pids:
            return rss_bytes(pids)
        return leader[1] + rss_bytes([p for p in pids if p != leader[0]])

    def oom_kills(self) -> int:
        return _keyed(self.path, "memory.events").get("oom_kill", 0)


class Tree:
    """The cgroups of one supervisor: a Group per component, a leaf per run."""

    def __init__(self, base: Path, controllers: frozenset[str], missing: str | None) -> None:
        self.base = base
        #: The CPU used by every process in the tree (core.snapshot.StatsReader).
        self.cpu_stat = str(base / "cpu.stat")
        #: Controllers enabled for the components ("cpu", "memory").
        self.controllers = controllers
        #: Why a wanted controller is not there (None: both are).
        self.missing = missing
        self._runs = 0
        #: Each component's latest run, whose processes the figures read.
        self.current: dict[str, Group] = {}

    def group(self, cid: str) -> Group:
        return Group(self.base / cid)

    def new_run(self, cid: str, memory_max: int | None, cpu_max: float | None) -> Group:
        """The component's cgroup (made, limits set) and a new empty leaf for one run in it."""
        comp = self.group(cid)
        comp.path.mkdir(exist_ok=True)
        if "memory" in self.controllers:
            _write(comp.path / "memory.max", str(memory_max) if memory_max else "max")
        if "cpu" in self.controllers:
            quota = "max" if not cpu_max else str(max(1000, round(cpu_max * CPU_PERIOD)))
            _write(comp.path / "cpu.max", f"{quota} {CPU_PERIOD}")
        self._runs += 1
        leaf = Group(comp.path / str(self._runs))
        leaf.path.mkdir(exist_ok=True)
        self.current[cid] = leaf
        return leaf

    def component_ids(self) -> list[str]:
        with contextlib.suppress(OSError):
            return sorted(e.name for e in os.scandir(self.base)
                          if e.is_dir(follow_symlinks=False))
        return []

    def leftovers(self) -> dict[str, list[int]]:
        """What a previous run left in this tree, {component id: pids}, then ended and removed."""
        found = {}
        for cid in self.component_ids():
            group = self.group(cid)
            pids = group.pids()
            if pids:
                found[cid] = pids
            group.end()
        return found

    def close(self) -> None:
        """End and remove every component's cgroup, then the tree itself."""
        for cid in self.component_ids():
            self.group(cid).end()
        with contextlib.suppress(OSError):
            os.rmdir(self.base)


def open_tree(name: str) -> tuple[Tree | None, str]:
    """The tree `name` under this process's cgroup, made ready; or None and why not.

    The reason of a Tree is "" or why the cpu/memory controllers are not used.
    """
    mount = find_mount()
    if mount is None:
        return None, "no cgroup v2 hierarchy is mounted (/proc/self/mountinfo)"
    own = own_cgroup()
    if own is None:
        return None, "this process is in no cgroup v2 (/proc/self/cgroup has no 0:: line)"
    root = mount / own.lstrip("/")
    base = root / name
    hint = "(run as root, or give the supervisor a delegated cgroup: systemd Delegate=yes)"
    try:
        base.mkdir(exist_ok=True)
    except OSError as exc:
        return None, f"cannot create the cgroup {base}: {exc.strerror or exc} {hint}"
    if not os.access(base / "cgroup.procs", os.W_OK):
        return None, f"cannot move processes into {base} {hint}"
    controllers, missing = _enable(root, base, own, name)
    return Tree(base, controllers, missing), missing or ""


def _enable(root: Path, base: Path, own: str, name: str) -> tuple[frozenset[str], str | None]:
    """Enable cpu and memory for the components' cgroups where the kernel offers them."""
    try:
        offered = set(_read(root / "cgroup.controllers").split())
    except OSError:
        offered = set()
    have = [c for c in WANTED if c in offered]
    lacking = [c for c in WANTED if c not in offered]
    why = (f"cgroup v2 offers no {' and no '.join(lacking)} controller at {root} (on a hybrid "
           "hierarchy they are in v1; under systemd, delegate them)") if lacking else None
    if not have:
        return frozenset(), why
    change = " ".join(f"+{c}" for c in have)
    try:
        _write(root / "cgroup.subtree_control", change)
    except OSError as exc:
        if exc.errno != errno.EBUSY or own == "/":
            return frozenset(), f"cannot enable {', '.join(have)} at {root}: {exc.strerror}"
        # Processes in <own> itself (the kernel's "no internal processes"): move
        # this supervisor into a leaf of its own, then try again.
        try:
            leaf = root / f"{name}.supervisor"
            leaf.mkdir(exist_ok=True)
            _write(leaf / "cgroup.procs", str(os.getpid()))
            _write(root / "cgroup.subtree_control", change)
        except OSError as again:
            return frozenset(), (f"cannot enable {', '.join(have)} at {root}: "
                                 f"{again.strerror} (other processes share the supervisor's "
                                 "cgroup; give it one of its own)")
    try:
        _write(base / "cgroup.subtree_control", change)
    except OSError as exc:
        return frozenset(), f"cannot enable {', '.join(have)} at {base}: {exc.strerror}"
    return frozenset(have), why
