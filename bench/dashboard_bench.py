"""The dashboard's own work per snapshot with many components, in Chromium.

    python bench/dashboard_bench.py [--components 1000] [--updates 20]

Starts `python -m core` with `--components` sleepers (interval 1 s) on
127.0.0.1, opens the page in Debian's Chromium (Playwright), and reads the
Performance API measures the page leaves per snapshot: "snapshot-script"
(its own script) and "snapshot-render" (the next frame's rendering: style,
layout and paint); their sum is the page's work per update. Reported with
all shown, with a name filter that leaves ten, and grouped by state.
Bounded: every wait has a deadline, and the supervisor is stopped by its PID.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
OBSERVE = """() => {
    window.__measures = [];
    new PerformanceObserver((list) => {
        for (const e of list.getEntries()) window.__measures.push([e.name, e.duration]);
    }).observe({entryTypes: ["measure"]});
}"""


def collect(page: Any, updates: int) -> dict[str, float]:
    page.evaluate(OBSERVE)
    page.wait_for_function(
        "(n) => window.__measures.filter((m) => m[0] === 'snapshot-render').length >= n",
        arg=updates, timeout=(updates * 1.0 + 30) * 1000)
    found = page.evaluate("window.__measures")
    script = [d for n, d in found if n == "snapshot-script"]
    render = [d for n, d in found if n == "snapshot-render"]
    return {"script_p50": statistics.median(script), "render_p50": statistics.median(render),
            "work_p50": statistics.median(script) + statistics.median(render),
            "work_max": max(script) + max(render)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--components", type=int, default=1000)
    parser.add_argument("--updates", type=int, default=20)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    sleep = shutil.which("sleep") or "/bin/sleep"
    with tempfile.TemporaryDirectory(prefix="cc-dash-") as tmp:
        d = Path(tmp)
        lines = ['[server]\nport = 0\ninterval = 1.0\ndata_dir = "data"\nlog_dir = "logs"\n']
        for i in range(args.components):
            lines.append(f'[components.c{i:04d}]\nplugin = "process"\n'
                         f'command = {json.dumps([sleep, "3600"])}\n')
        (d / "config.toml").write_text("\n".join(lines))
        out = (d / "out.txt").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "core", "--config", "config.toml"],
                                cwd=d, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            port = 0
            while not port and time.monotonic() < deadline:
                found = re.search(rb"dashboard: http://127\.0\.0\.1:(\d+)/",
                                  (d / "out.txt").read_bytes())
                port = int(found.group(1)) if found else 0
                time.sleep(0.1)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM,
                                             args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_function(
                    "(n) => document.querySelectorAll('.card[data-state=running]').length >= n",
                    arg=args.components, timeout=60_000)
                rows = {"all shown": collect(page, args.updates)}
                page.fill("#filter-name", "c000")  # c0000..c0009
                rows["name filter, 10 shown"] = collect(page, args.updates)
                page.fill("#filter-name", "")
                page.select_option("#group-by", "state")
                rows["grouped by state"] = collect(page, args.updates)
                browser.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            out.close()
    print(f"dashboard, {args.components} components, {args.updates} updates each, "
          f"{os.cpu_count()} cores (ms per snapshot)")
    print("| view | script p50 | render p50 | work p50 (sum) | script max + render max |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['script_p50']:.1f} | {r['render_p50']:.1f} | "
              f"{r['work_p50']:.1f} | {r['work_max']:.1f} |")


if __name__ == "__main__":
    main()
