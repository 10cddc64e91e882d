"""A client that stops reading delays nobody and is dropped."""

from __future__ import annotations

import json

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed

from .conftest import web_server, ws_client

pytestmark = pytest.mark.anyio

INTERVAL = 0.2
TICKS = 15


def big_doc(k: int, size: int) -> dict:
    return {"components": {"big": {"name": "x" * size, "state": "running"}},
            "metrics": {"timestamp": str(k)}}


# 30 KB: the socket buffers of a client that stopped reading fill within a few
# ticks; the server sees unsent data, sends nothing more, closes with 1008
# (delivered after what was queued). 400 KB: one message fills them, the
# send itself blocks; after 3 intervals the socket is cut (no frame can
# reach a client that does not read; it sees 1006).
@pytest.mark.parametrize(("size", "codes"), [(30_000, {1008}), (400_000, {1006, 1008})])
async def test_stalled_reader_isolated_then_closed(tmp_path, size, codes):
    async with web_server(tmp_path, interval=INTERVAL, tick=False) as srv:
        srv.hub.publish(big_doc(0, size))
        arrivals: dict[int, list[tuple[float, int]]] = {i: [] for i in range(3)}

        async def reader(i: int, ready: trio.Event) -> None:
            async with ws_client(srv.ws_url, max_message_size=2**21) as ws:
                await ws.get_message()
                ready.set()
                for _ in range(TICKS):
                    doc = json.loads(await ws.get_message())
                    arrivals[i].append((trio.current_time(), int(doc["metrics"]["timestamp"])))

        async with ws_client(srv.ws_url, max_message_size=2**21) as stuck:
            async with trio.open_nursery() as nursery:
                for i in range(3):
                    ready = trio.Event()
                    nursery.start_soon(reader, i, ready)
                    await ready.wait()
                published = []
                for k in range(1, TICKS + 1):
                    srv.hub.publish(big_doc(k, size))
                    published.append(trio.current_time())
                    await trio.sleep(INTERVAL)
            # Every reader got every tick, promptly, while `stuck` read nothing.
            for i, got in arrivals.items():
                assert [k for _, k in got] == list(range(1, TICKS + 1)), i
                lags = [t - published[k - 1] for t, k in got]
                assert max(lags) < INTERVAL / 2, (i, lags)
            async with httpx.AsyncClient(base_url=srv.url) as http:
                text = (await http.get("/metrics")).text
            assert "control_center_websocket_clients 0.0" in text  # readers gone, stuck cut
            # What was queued before the close still arrives, then the 1008.
            seen = []
            with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
                while True:
                    seen.append(json.loads(await stuck.get_message())["metrics"]["timestamp"])
            assert closed.value.reason.code in codes
            assert seen[0] == "0" and len(seen) < TICKS
