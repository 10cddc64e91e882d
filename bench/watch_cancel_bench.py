"""How long a cancelled watchfiles.awatch takes to stop under trio, with and without
the stop event that core.watch sets itself when cancelled.

    .venv/bin/python bench/watch_cancel_bench.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import anyio
import trio
import watchfiles


async def once(own_stop: bool, where: str) -> float:
    stop = anyio.Event() if own_stop else None

    async def consume() -> None:
        async for _ in watchfiles.awatch(where, stop_event=stop, step=50):
            pass

    async def guard() -> None:
        try:
            await trio.sleep_forever()
        finally:
            if stop is not None:
                stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(guard)
        nursery.start_soon(consume)
        await trio.sleep(0.3)
        (Path(where) / "a.py").write_text(str(time.time()))
        await trio.sleep(0.3)
        began = time.monotonic()
        nursery.cancel_scope.cancel()
    return time.monotonic() - began


def main() -> None:
    with tempfile.TemporaryDirectory() as where:
        for own_stop in (False, True, False, True):
            took = trio.run(once, own_stop, where)
            print(f"{'own stop event' if own_stop else 'awatch alone  '}: cancel took "
                  f"{took * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
