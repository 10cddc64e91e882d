"""What a supervisor loads at start, for its memory: what only some configs need waits.

Each of these costs resident memory in every supervisor (watchfiles and its
native watcher about 0.9 MB, statistics with fractions and
decimal 0.5 MB, urllib.request 0.3 MB); they are imported where a component
or remote first needs them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

LAZY = ["watchfiles", "statistics", "urllib.request", "dotenv", "difflib"]

# Everything `python -m core` imports before it runs, plugins included.
LOADS = f"""
import sys
import core.cli, core.app, core.supervisor, core.web
from core.plugins import PluginManager
PluginManager()
print(" ".join(m for m in {LAZY!r} if m in sys.modules))
"""


def test_the_supervisor_starts_without_what_only_some_configs_need() -> None:
    out = subprocess.run([sys.executable, "-c", LOADS], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == []
