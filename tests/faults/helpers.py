"""Helpers for the fault tests: a real `python -m core` in a subprocess, and process scans.

`Core` starts the product as an operator would (own config in a temp dir,
port 0, data and logs under the temp dir), reads the port from the line it
prints, talks REST to it with httpx, and signals it by pid. Whatever a test
started is killed at teardown, by pid, including every process that carries
this run's marker (core.process.CHILD_ENV) in its environment.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from core.process import CHILD_ENV

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]
_PORT_LINE = re.compile(r"dashboard: http://127\.0\.0\.1:(\d+)/")


def py_cmd(code: str) -> str:
    """A TOML array running `code` with the supervisor's interpreter."""
    return "[" + ", ".join(_toml_str(a) for a in ("{python}", "-c", code)) + "]"


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def component(cid: str, code: str, **keys: Any) -> str:
    """A `[components.<cid>]` table of the process plugin running Python `code`."""
    lines = [f"[components.{cid}]", 'plugin = "process"', f"command = {py_cmd(code)}"]
    lines += [f"{k} = {_toml(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


SLEEP = "import time; time.sleep(600)"


def write_config(tmp_path: Path, components: str, *, interval: float = 0.2,
                 server: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[server]\nport = 0\ninterval = {interval}\ndata_dir = "data"\n'
                    f'log_dir = "logs"\ncontrol_rate = 10000.0\n{server}\n\n{components}')
    return path


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(pred: Callable[[], Any], timeout: float, what: str, step: float = 0.02) -> Any:
    """Poll `pred` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def run_id(pid: int) -> str:
    """The RUN_ID (core.process) of the supervisor process `pid`."""
    return f"{pid}-{round(psutil.Process(pid).create_time() * 100)}"


def marked(prefix: str) -> list[psutil.Process]:
    """Live processes whose CHILD_ENV marker starts with `prefix` (a run id + "/")."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if proc.environ().get(CHILD_ENV, "").startswith(prefix) and alive(proc.pid):
                found.append(proc)
    return found


def by_env(procs: Iterable[psutil.Process], key: str) -> dict[str, list[int]]:
    """Live processes grouped by the value of environment variable `key`."""
    groups: dict[str, list[int]] = {}
    for proc in procs:
        with contextlib.suppress(psutil.Error, OSError):
            value = proc.environ().get(key)
            if value is not None and proc.status() != psutil.STATUS_ZOMBIE:
                groups.setdefault(value, []).append(proc.pid)
    return groups


class Core:
    """One `python -m core --config PATH` subprocess and a REST client to it."""

    def __init__(self, config: Path, *, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.out = config.with_name(f"core-{time.monotonic_ns()}.out")
        self.err = self.out.with_suffix(".err")
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen([PY, "-m", "core", "--config", str(config)],
                                         cwd=config.parent, env=full_env, stdout=out,
                                         stderr=err, stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        self.run_id = run_id(self.pid)
        self.port = 0
        self.client: httpx.Client | None = None

    def wait_ready(self, timeout: float = 20.0) -> Core:
        def port() -> int:
            if self.proc.poll() is not None:
                raise AssertionError(f"core exited with {self.proc.returncode}: "
                                     f"{self.stderr()}")
            found = _PORT_LINE.search(self.out.read_text())
            return int(found.group(1)) if found else 0

        self.port = wait_for(port, timeout, "the dashboard address")
        self.client = httpx.Client(base_url=self.url, timeout=10.0)
        wait_for(lambda: self.client.get("/api/status").status_code == 200, timeout,
                 "the first snapshot")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def get(self, path: str) -> Any:
        assert self.client is not None
        resp = self.client.get(path)
        assert resp.status_code == 200, (path, resp.status_code, resp.text)
        return resp.json()

    def post(self, path: str) -> Any:
        assert self.client is not None
        resp = self.client.post(path)
        assert resp.status_code == 200, (path, resp.status_code, resp.text)
        return resp.json()

    def status(self) -> dict[str, Any]:
        return self.get("/api/status")

    def comp(self, cid: str) -> dict[str, Any]:
        return self.get(f"/api/components/{cid}")

    def notes(self, cid: str) -> list[str]:
        lines = self.get(f"/api/components/{cid}/logs?lines=5000")["lines"]
        return [x["text"] for x in lines if x["stream"] == "supervisor"]

    def wait_state(self, cid: str, pred: Callable[[dict[str, Any]], bool], timeout: float,
                   what: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            view = self.comp(cid)
            return view if pred(view) else None

        return wait_for(check, timeout, f"{cid}: {what}", step=0.05)

    def running_pids(self, timeout: float = 15.0) -> dict[str, int]:
        """Wait until every component runs; {id: pid}."""
        def check() -> dict[str, int] | None:
            comps = self.status()["components"]
            if all(c["state"] == "running" and c["pid"] for c in comps.values()):
                return {cid: c["pid"] for cid, c in comps.items()}
            return None

        return wait_for(check, timeout, "every component running", step=0.05)

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"core did not exit within {timeout} s; stderr:\n"
                                 f"{self.stderr()[-3000:]}") from None

    def leftovers(self) -> list[psutil.Process]:
        return marked(self.run_id + "/")

    def close(self) -> None:
        """Kill the supervisor and everything of its run that is still alive."""
        if self.client is not None:
            self.client.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for proc in self.leftovers():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        end_cgroups(self.config.parent / "data")


def end_cgroups(data_dir: Path) -> None:
    """End and remove the cgroups of the supervisor of `data_dir` (a SIGKILLed one leaves them)."""
    from core import cgroup
    from core.remotes import INSTANCE_ID_FILE

    mount, own = cgroup.find_mount(), cgroup.own_cgroup()
    try:
        instance = (data_dir / INSTANCE_ID_FILE).read_text().strip()
    except OSError:
        return
    if mount is None or own is None:
        return
    base = mount / own.lstrip("/") / f"control-center-{instance}"
    if base.is_dir():
        cgroup.Tree(base, frozenset(), None).close()


def plugin_site(tmp_path: Path) -> Path:
    """A third-party plugin `faulty`, installed as pip would (package + dist-info entry point).

    Per component options: `raise_in` / `hang_in` / `exit_in` name a hook
    ("validate_config", "start", "probe", "stop") that raises / sleeps for an
    hour / calls sys.exit(); `odd_probe` returns a Probe with odd fields; `garbage_probe`
    makes the probe return a string; `start_delay` slows the start hook down;
    `bad_launch` ("env" or "nul") returns a Launch that no process can be made of.
    """
    site = tmp_path / "site"
    pkg = site / "cc_faulty"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        import sys, time
        from core import Launch, OptionReader, Probe, hookimpl

        def _misbehave(options, hook):
            if options.get("raise_in") == hook:
                raise RuntimeError(f"boom in {hook}")
            if options.get("exit_in") == hook:
                sys.exit(f"exit in {hook}")
            if options.get("hang_in") == hook:
                time.sleep(3600)

        @hookimpl
        def validate_config(component_id, options):
            _misbehave(options, "validate_config")
            opts = OptionReader(options)
            out = {"raise_in": opts.string("raise_in", None),
                   "exit_in": opts.string("exit_in", None),
                   "odd_probe": opts.string("odd_probe", None),
                   "hang_in": opts.string("hang_in", None),
                   "garbage_probe": opts.boolean("garbage_probe", False),
                   "start_delay": opts.number("start_delay", 0.0),
                   "bad_launch": opts.string("bad_launch", None),
                   "tag": opts.string("tag", component_id)}
            opts.finish()
            return out

        @hookimpl
        def start(component):
            _misbehave(component.options, "start")
            time.sleep(component.options["start_delay"])
            code = "import time; print('up', flush=True); time.sleep(600)"
            env = {"FAULT_COMP": component.options["tag"]}
            bad = component.options["bad_launch"]
            if bad == "env":
                env["NOT_A_STRING"] = 42
            elif bad == "nul":
                code += "\\0"
            return Launch(argv=(sys.executable, "-c", code), env=env)

        @hookimpl
        def probe(component, pid):
            _misbehave(component.options, "probe")
            if component.options["garbage_probe"]:
                return "garbage"
            odd = component.options["odd_probe"]
            if odd == "error_not_str":
                return Probe(healthy=False, error=123)
            if odd == "metrics_not_numbers":
                return Probe(metrics={"total_concepts": "many", "total_associations": True,
                                      "avg_latency_ms": float("nan"),
                                      "queries_per_second": float("inf"),
                                      "storage_size_mb": 2.5})
            if odd == "metrics_not_mapping":
                return Probe(metrics=None)
            return Probe(healthy=True)

        @hookimpl
        def stop(component, pid):
            _misbehave(component.options, "stop")
    '''))
    dist = site / "cc_faulty-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cc-faulty\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[control_center]\nfaulty = cc_faulty\n")
    (dist / "RECORD").write_text("")
    return site


def plugin_env(site: Path) -> dict[str, str]:
    return {"PYTHONPATH": f"{site}:{ROOT}"}


def kill_pids(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def watch_for_doubles(pid: int, key: str = "FAULT_COMP") -> Iterator[list[dict[str, list[int]]]]:
    """Sample the children of `pid` every 2 ms; the list collects every moment
    when one component (grouped by the `key` environment variable) had two."""
    doubles: list[dict[str, list[int]]] = []
    done = threading.Event()

    def watch() -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            me = psutil.Process(pid)
            while not done.is_set():
                groups = by_env(me.children(), key)
                if any(len(p) > 1 for p in groups.values()):
                    doubles.append(groups)
                time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield doubles
    finally:
        done.set()
        watcher.join(5)


def start(cores: list[Core], config: Path, *, ready: bool = True, **kwargs: object) -> Core:
    """Start a Core on `config`, remembered in `cores` for teardown."""
    core = Core(config, **kwargs)  # type: ignore[arg-type]
    cores.append(core)
    return core.wait_ready() if ready else core
