"""Where the supervisor's resident memory comes from: the stack's imports, then ours.

    python bench/memory_floor.py [--children 50]

Each row is a fresh interpreter (this venv's) that imports one more layer
than the row above and prints its VmRSS (and how much of it is file pages,
RssFile: the shared libraries and the interpreter's own mapped code). The
layers are what `python -m core` imports at start, in the order they load:
trio; psutil and pluggy; the web stack that DESIGN.md decides (Starlette,
hypercorn's per-connection server, trio-websocket); then all of ours. The
last rows are `python -m core` itself, running one component, then
`--children` components (`sleep 3600`), read from outside 10 s after its
children run. Every process is ended by its pid; each step is bounded.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LAYERS = [
    ("a bare interpreter", []),
    ("+ trio", ["trio"]),
    ("+ psutil, pluggy", ["psutil", "pluggy"]),
    ("+ Starlette, hypercorn, trio-websocket", ["starlette.applications",
                                                "starlette.routing",
                                                "hypercorn.trio.tcp_server",
                                                "trio_websocket"]),
    ("+ everything of ours imported at start", ["core.cli", "core.app", "core.web.app",
                                                "core.supervisor", "core.runner",
                                                "plugins.process", "plugins.storage",
                                                "plugins.api", "plugins.docker"]),
]

REPORT = ("import sys\n"
          "f = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
          "print(int(f['VmRSS'].split()[0]), int(f['RssFile'].split()[0]))\n")


def _status(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["RssFile"].split()[0])


def layer_kb(modules: list[str]) -> tuple[int, int]:
    code = "".join(f"import {m}\n" for m in modules) + REPORT
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.split()
    return int(out[0]), int(out[1])


def running_kb(children: int) -> tuple[int, int]:
    from core_bench import write_config  # bench/, beside this script

    with tempfile.TemporaryDirectory(prefix="cc-memory-") as tmp:
        write_config(Path(tmp), children, interval=2.0)
        out = Path(tmp, "out")
        with out.open("wb") as sink:
            proc = subprocess.Popen([sys.executable, "-m", "core", "--config", "config.toml"],
                                    cwd=tmp, stdout=sink, stderr=subprocess.STDOUT,
                                    env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            deadline = time.monotonic() + 60
            port = 0
            while time.monotonic() < deadline:
                found = re.search(r"dashboard: http://127\.0\.0\.1:(\d+)/", out.read_text())
                if found:
                    port = int(found.group(1))
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    conn.request("GET", "/api/status")
                    states = [c["state"] for c in
                              json.loads(conn.getresponse().read())["components"].values()]
                    conn.close()
                    if states.count("running") == children:
                        break
                if proc.poll() is not None:
                    raise SystemExit(f"python -m core ended: {out.read_text()[-2000:]}")
                time.sleep(0.2)
            else:
                raise SystemExit(f"{children} components not running within 60 s")
            time.sleep(10)
            return _status(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--children", type=int, default=50)
    args = parser.parse_args()
    children = max(1, min(args.children, 1000))
    rows = []
    modules: list[str] = []
    for label, more in LAYERS:
        modules = modules + more
        rows.append((label, *layer_kb(modules)))
    rows.append(("python -m core, 1 component", *running_kb(1)))
    rows.append((f"python -m core, {children} components", *running_kb(children)))
    print(f"\nPython {sys.version.split()[0]}, {os.cpu_count()} cores\n")
    print("| | RSS | of it file pages | more than the row above |")
    print("|---|---|---|---|")
    previous = None
    for label, rss, file_kb in rows:
        more = "" if previous is None else f"{(rss - previous) / 1024:+.1f} MB"
        print(f"| {label} | {rss / 1024:.1f} MB | {file_kb / 1024:.1f} MB | {more} |")
        previous = rss


if __name__ == "__main__":
    main()
