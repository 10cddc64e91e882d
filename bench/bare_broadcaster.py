"""Baseline for bench/fanout.py: a bare trio-websocket broadcaster.

Same snapshot, same tick, no HTTP, no auth, no filters, no slow-client
handling: one loop sends one encoded text to every client in turn.

    python bench/bare_broadcaster.py --interval 2.0   # prints the port
"""

from __future__ import annotations

import argparse
import json
import sys

import trio
from trio_websocket import ConnectionClosed, serve_websocket

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from fanout_doc import make_doc, raise_fd_limit


async def main(interval: float) -> None:
    clients: set = set()
    latest = json.dumps(make_doc())

    async def handler(request) -> None:
        ws = await request.accept()
        await ws.send_message(latest)
        clients.add(ws)
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed:
            pass
        finally:
            clients.discard(ws)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        print(server.port, flush=True)
        next_at = trio.current_time() + interval
        while True:
            await trio.sleep_until(next_at)
            next_at += interval
            latest = json.dumps(make_doc())
            for ws in list(clients):
                try:
                    await ws.send_message(latest)
                except ConnectionClosed:
                    clients.discard(ws)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--interval", type=float, default=2.0)
    raise_fd_limit()
    trio.run(main, parser.parse_args().interval)
