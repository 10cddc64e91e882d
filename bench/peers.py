"""Control Center beside supervisord, circus and PM2, measured from outside.

    python bench/peers.py --supervisord /tmp/peers-venv/bin/supervisord \\
        --circusd /tmp/peers-venv/bin/circusd --pm2 /tmp/pm2/node_modules/.bin/pm2 \\
        [--children 50] [--kills 15] [--idle-seconds 60] [--only ours,pm2] [--no-cgroups]
        [--poll-ms 5]

Installs nothing: give it the peers' commands (a peer left out is skipped).
Each supervisor gets a generated config of `--children` programs running
`sleep 3600`, in a scratch directory, and the same harness:

- restart: SIGKILL one child, then every `--poll-ms` (5 ms) read the
  supervisor's children until a new one runs `sleep 3600`; p50 and p90 of `--kills`,
  one kill every 1.5 s (past every peer's "stable after": PM2's min_uptime
  and supervisord's startsecs are 1 s, ours is set to 1 s likewise);
- idle: the supervisor's own CPU time (children excluded) over
  `--idle-seconds`, as a percentage of one core: the run time of each of
  its threads (/proc/PID/task/*/schedstat, in nanoseconds), where the
  kernel has it; the utime and stime of /proc/PID/stat (psutil) count
  10 ms clock ticks, which a supervisor that wakes for a millisecond or
  two a tick is charged by chance (it is seen when a tick lands on it); a
  thread that ends within the window takes its time along, so the figure
  errs low, never high;
- RSS of the supervisor process alone (PM2: its God daemon);
- status of all children: ours GET /api/status on a new connection,
  supervisord getAllProcessInfo over XML-RPC, PM2 `pm2 jlist`.

A restart is seen at the first read of the children after it: with a 5 ms
poll, every restart faster than that reads as about one poll, and figures
at that floor do not rank peers. The table prints the floor (one poll and
one read, `harness floor`); a smaller `--poll-ms` (0.5) ranks them.

Each supervisor is stopped by its PID (SIGTERM, then SIGKILL after 10 s),
and any child of it left is SIGKILLed by PID. Every loop is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
#: By its full path: PM2 resolves a bare name, so all get the same command line.
PROGRAM = [shutil.which("sleep") or "/bin/sleep", "3600"]
_CMDLINE = b"\0".join(p.encode() for p in PROGRAM) + b"\0"
KILL_EVERY = 1.5


def _children(ppid: int) -> list[int] | None:
    """The children of `ppid` from its threads' `children` files; None where unreadable."""
    try:
        found: list[int] = []
        for tid in os.listdir(f"/proc/{ppid}/task"):
            with open(f"/proc/{ppid}/task/{tid}/children", "rb") as f:
                found.extend(int(p) for p in f.read().split())
        return found
    except (OSError, ValueError):
        return None


def children_running_program(ppid: int) -> set[int]:
    """Children of `ppid` whose command line is PROGRAM.

    From the kernel's list of `ppid`'s children (CONFIG_PROC_CHILDREN), else
    one pass over /proc.
    """
    found = set()
    pids = _children(ppid)
    if pids is None:
        pids = [int(n) for n in os.listdir("/proc") if n.isdigit()]
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
            if int(data[data.rfind(b")") + 2:].split(None, 2)[1]) != ppid:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read() == _CMDLINE:
                    found.add(pid)
        except (OSError, ValueError, IndexError):
            continue
    return found


def _successor(ppid: int, before: set[int]) -> bool:
    """Whether a child of `ppid` not in `before` runs PROGRAM (~0.1 ms: new pids only)."""
    pids = _children(ppid)
    if pids is None:
        return bool(children_running_program(ppid) - before)
    for pid in set(pids) - before:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read() == _CMDLINE:
                    return True
        except OSError:
            continue
    return False


def harness_floor_ms(ppid: int, poll: float, rounds: int = 50) -> float:
    """The least restart figure the harness can give: one poll and one read."""
    before = children_running_program(ppid)
    began = time.perf_counter()
    for _ in range(rounds):
        _successor(ppid, before)
        time.sleep(poll)
    return (time.perf_counter() - began) / rounds * 1000


def wait_until(pred: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


@dataclass
class Peer:
    name: str
    directory: Path
    children: int
    proc: subprocess.Popen[bytes] | None = None
    pid: int = 0
    results: dict[str, str] = field(default_factory=dict)

    def launch(self) -> None:
        raise NotImplementedError

    def status_ms(self) -> float | None:
        return None

    def popen(self, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
        out = (self.directory / "supervisor.out").open("wb")
        return subprocess.Popen(argv, cwd=self.directory, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, **kw)  # type: ignore[call-overload]

    def stop(self) -> None:
        """SIGTERM the supervisor by PID, SIGKILL after 10 s, then any child left."""
        if not self.pid:
            return
        left = children_running_program(self.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        try:
            sup = psutil.Process(self.pid)
            sup.wait(10)
        except psutil.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


class Ours(Peer):
    #: More config.toml, e.g. a notifier (see OursHangingNotifier).
    extra = ""

    def launch(self) -> None:
        lines = ['[server]\nport = 0\ninterval = 2.0\ndata_dir = "data"\nlog_dir = "logs"\n',
                 self.extra]
        for i in range(self.children):
            lines.append(f'[components.c{i:03d}]\nplugin = "process"\n'
                         f'command = {json.dumps(PROGRAM)}\nstable_after = 1.0\n')
        (self.directory / "config.toml").write_text("\n".join(lines))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = self.popen([sys.executable, "-m", "core", "--config", "config.toml"],
                               env=env)
        self.pid = self.proc.pid
        out = self.directory / "supervisor.out"

        def port() -> int:
            found = re.search(r"dashboard: http://127\.0\.0\.1:(\d+)/", out.read_text())
            return int(found.group(1)) if found else 0

        self.port = int(wait_until(port, 30, "our dashboard address"))  # type: ignore[arg-type]

    def status_ms(self) -> float | None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        began = time.perf_counter()
        conn.request("GET", "/api/status")
        body = conn.getresponse().read()
        took = (time.perf_counter() - began) * 1000
        conn.close()
        assert len(json.loads(body)["components"]) == self.children
        return took


class OursHangingNotifier(Ours):
    """Ours with a notifier that hangs on every event (a command that never ends
    within its 30 s timeout): restarts must not wait for it."""

    extra = ('[notify.stuck]\nkind = "command"\n'
             f'command = {json.dumps([sys.executable, "-c", "import time; time.sleep(600)"])}\n'
             'events = ["state", "crashed", "restart_scheduled"]\n'
             'min_interval = 0\ntimeout = 30\nretries = 0\n')


class OursNoCgroups(Ours):
    """Ours with process-group containment only (no cgroup per component)."""

    extra = "cgroups = false\n"


class Supervisord(Peer):
    def __init__(self, *args: object, command: str) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.command = command

    def launch(self) -> None:
        d = self.directory
        port = _free_port()
        self.port = port
        lines = [f"[supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\n"
                 f"pidfile={d}/supervisord.pid\nchildlogdir={d}\n",
                 f"[inet_http_server]\nport=127.0.0.1:{port}\n",
                 "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = "
                 "supervisor.rpcinterface:make_main_rpcinterface\n"]
        for i in range(self.children):
            lines.append(f"[program:c{i:03d}]\ncommand={' '.join(PROGRAM)}\n")
        (d / "supervisord.conf").write_text("\n".join(lines))
        self.proc = self.popen([self.command, "-c", str(d / "supervisord.conf")])
        self.pid = self.proc.pid

    def status_ms(self) -> float | None:
        server = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{self.port}/RPC2")
        began = time.perf_counter()
        info = server.supervisor.getAllProcessInfo()
        took = (time.perf_counter() - began) * 1000
        assert len(info) == self.children  # type: ignore[arg-type]
        return took


class Circus(Peer):
    def __init__(self, *args: object, command: str) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.command = command

    def launch(self) -> None:
        d = self.directory
        lines = [f"[circus]\nendpoint = tcp://127.0.0.1:{_free_port()}\n"
                 f"pubsub_endpoint = tcp://127.0.0.1:{_free_port()}\nstatsd = false\n"]
        for i in range(self.children):
            lines.append(f"[watcher:c{i:03d}]\ncmd = {' '.join(PROGRAM)}\nnumprocesses = 1\n")
        (d / "circus.ini").write_text("\n".join(lines))
        self.proc = self.popen([self.command, str(d / "circus.ini")])
        self.pid = self.proc.pid


class PM2(Peer):
    def __init__(self, *args: object, command: str) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.command = command
        self.env = {**os.environ, "PM2_HOME": str(self.directory / "pm2home")}

    def launch(self) -> None:
        d = self.directory
        apps = [{"name": f"c{i:03d}", "script": PROGRAM[0], "args": PROGRAM[1:],
                 "interpreter": "none"} for i in range(self.children)]
        (d / "ecosystem.config.js").write_text(
            "module.exports = " + json.dumps({"apps": apps}) + ";\n")
        subprocess.run([self.command, "start", str(d / "ecosystem.config.js")], cwd=d,
                       env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=120, check=True)
        self.pid = int((d / "pm2home" / "pm2.pid").read_text())

    def status_ms(self) -> float | None:
        began = time.perf_counter()
        out = subprocess.run([self.command, "jlist"], env=self.env, capture_output=True,
                             timeout=60, check=True).stdout
        took = (time.perf_counter() - began) * 1000
        assert len(json.loads(out)) == self.children
        return took


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def restart_ms(peer: Peer, kills: int, poll: float) -> list[float]:
    """Outside restart latency: SIGKILL a child, poll for its successor every `poll` s."""
    times = []
    for _ in range(kills):
        before = children_running_program(peer.pid)
        victim = min(before)
        began = time.perf_counter()
        os.kill(victim, signal.SIGKILL)
        deadline = began + 10.0
        while time.perf_counter() < deadline:
            if _successor(peer.pid, before):
                times.append((time.perf_counter() - began) * 1000)
                break
            time.sleep(poll)
        else:
            times.append(float("nan"))
        time.sleep(KILL_EVERY)
    return times


def cpu_seconds(pid: int) -> float:
    """CPU time used by `pid`'s threads now alive: schedstat's run time where it is."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread gone
                with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                    total += int(f.read().split()[0])
    except OSError:  # no schedstat (a kernel without CONFIG_SCHED_INFO)
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    return total / 1e9


def measure(peer: Peer, kills: int, idle_seconds: float,
            poll: float) -> dict[str, float | None]:
    peer.launch()
    wait_until(lambda: len(children_running_program(peer.pid)) == peer.children, 60,
               f"{peer.name}'s {peer.children} children")
    time.sleep(3.0)  # past start-up work and the 1 s "stable" marks
    began, cpu0 = time.monotonic(), cpu_seconds(peer.pid)
    time.sleep(idle_seconds)
    idle = (cpu_seconds(peer.pid) - cpu0) / (time.monotonic() - began) * 100
    rss = psutil.Process(peer.pid).memory_info().rss / 2**20
    statuses = [peer.status_ms() for _ in range(15)]
    status = None if statuses[0] is None else statistics.median(
        [s for s in statuses if s is not None])
    floor = harness_floor_ms(peer.pid, poll)
    times = restart_ms(peer, kills, poll)
    return {"p50": statistics.median(times), "p90": statistics.quantiles(times, n=10)[-1],
            "floor": floor, "idle": idle, "rss": rss, "status": status}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--supervisord", help="the supervisord command")
    parser.add_argument("--circusd", help="the circusd command")
    parser.add_argument("--pm2", help="the pm2 command")
    parser.add_argument("--children", type=int, default=50)
    parser.add_argument("--kills", type=int, default=15)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--poll-ms", type=float, default=5.0,
                        help="how often the restart harness reads the children (5)")
    parser.add_argument("--only", help="comma-separated: supervisord,circus,pm2,ours,"
                        "ours-no-cgroups")
    parser.add_argument("--no-cgroups", action="store_true",
                        help="also ours with [server] cgroups = false, beside ours")
    parser.add_argument("--hanging-notifier", action="store_true",
                        help="also ours with a notifier that hangs on every event")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    if not 0 < args.poll_ms <= 100:
        parser.error("--poll-ms must be more than 0 and at most 100")
    poll = args.poll_ms / 1000
    table: dict[str, dict[str, float | None]] = {}
    with tempfile.TemporaryDirectory(prefix="cc-peers-") as tmp:
        peers: list[Peer] = []
        base = Path(tmp)

        def folder(name: str) -> Path:
            path = base / name
            path.mkdir()
            return path

        if args.supervisord:
            peers.append(Supervisord("supervisord", folder("supervisord"), args.children,
                                     command=args.supervisord))
        if args.circusd:
            peers.append(Circus("circus", folder("circus"), args.children,
                                command=args.circusd))
        if args.pm2:
            peers.append(PM2("pm2", folder("pm2"), args.children, command=args.pm2))
        if args.no_cgroups:
            peers.append(OursNoCgroups("ours-no-cgroups", folder("ours-no-cgroups"),
                                       args.children))
        peers.append(Ours("ours", folder("ours"), args.children))
        if args.hanging_notifier:
            peers.append(OursHangingNotifier("ours+stuck-notifier", folder("ours-notify"),
                                             args.children))
        for peer in peers:
            if only and peer.name not in only:
                continue
            print(f"measuring {peer.name}...", file=sys.stderr, flush=True)
            try:
                table[peer.name] = measure(peer, args.kills, args.idle_seconds, poll)
            finally:
                peer.stop()
    print(f"\n{args.children} children `{' '.join(PROGRAM)}`, {args.kills} kills, "
          f"idle over {args.idle_seconds:g} s, restart polled every {args.poll_ms:g} ms, "
          f"{os.cpu_count()} cores\n")
    names = list(table)
    print("| | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    rows = [("restart after kill -9, p50", "p50", "{:.1f} ms"),
            ("restart after kill -9, p90", "p90", "{:.1f} ms"),
            ("harness floor (one poll + one read)", "floor", "{:.1f} ms"),
            ("idle CPU (supervisor only)", "idle", "{:.3f} %"),
            ("RSS (supervisor only)", "rss", "{:.0f} MB"),
            ("status of all, p50", "status", "{:.1f} ms")]
    for label, key, fmt in rows:
        cells = ["—" if table[n][key] is None else fmt.format(table[n][key]) for n in names]
        print(f"| {label} | " + " | ".join(cells) + " |")
    if "pm2" in table and "ours" in table:
        ratio = table["ours"]["p50"] / table["pm2"]["p50"]  # type: ignore[operator]
        print(f"\nrestart p50, ours / PM2: {ratio:.2f}")


if __name__ == "__main__":
    main()
