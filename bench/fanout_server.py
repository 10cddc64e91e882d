"""Our server for bench/fanout.py: core.web.serve with the benchmark snapshot.

The real web layer (hypercorn + Starlette, hub, fan-out, REST, auth checks)
publishing the same document as bare_broadcaster.py on the same tick. The
supervisor is real but has no component: probes are not what is measured.

    python bench/fanout_server.py --interval 2.0   # prints the port
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fanout_doc import make_doc, raise_fd_limit  # noqa: E402

from core.app import freeze_startup_objects  # noqa: E402
from core.collector import PacedCollector  # noqa: E402
from core.config import ServerConfig, parse  # noqa: E402
from core.hub import Hub  # noqa: E402
from core.plugins import PluginManager  # noqa: E402
from core.supervisor import Supervisor  # noqa: E402
from core.web import serve  # noqa: E402


async def main(interval: float) -> None:
    server = ServerConfig(port=0, interval=interval, max_clients=100_000)
    config = parse("", Path("/nonexistent/bench.toml"))
    hub = Hub(interval=interval, history_seconds=0)
    supervisor = Supervisor(config, PluginManager(load_entry_points=False), None)
    hub.publish(make_doc())
    collector = PacedCollector()  # as python -m core does
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve(
            supervisor, hub, server, shutdown=trio.Event(),
            after_fanout=collector.collect_if_due, task_status=task_status))
        freeze_startup_objects()
        collector.take_over()
        print(port, flush=True)
        next_at = trio.current_time() + interval
        while True:
            await trio.sleep_until(next_at)
            next_at += interval
            hub.publish(make_doc())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--interval", type=float, default=2.0)
    args = parser.parse_args()
    raise_fd_limit()
    trio.run(main, args.interval)
