"""The Python client and the CLI commands against a real server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from trio_websocket import serve_websocket

from core.client import ApiError, Client, StreamClosed

from .conftest import sleeper, web_server

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


async def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m core <args>` in a child process."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("CONTROL_CENTER_TOKEN", None) if env is None else None
    with trio.fail_after(30):
        return await trio.run_process([sys.executable, "-m", "core", *args], cwd=ROOT,
                                      env=full_env, capture_stdout=True, capture_stderr=True,
                                      check=False)


def out(result: subprocess.CompletedProcess) -> str:
    return result.stdout.decode()


def err(result: subprocess.CompletedProcess) -> str:
    return result.stderr.decode()


async def test_cli_commands(tmp_path):
    comps = sleeper("alpha") + sleeper("beta", autostart=False)
    async with web_server(tmp_path, comps) as srv:
        url = ["--url", srv.url]
        status = await cli("status", *url)
        assert status.returncode == 0, err(status)
        table = out(status).splitlines()
        assert table[0].split()[:3] == ["ID", "NAME", "STATE"]
        assert table[1].split()[0] == "alpha" and table[2].split()[:3] == ["beta", "beta",
                                                                           "stopped"]
        started = await cli("start", "beta", *url)
        assert started.returncode == 0 and out(started).startswith("beta: "), err(started)
        restarted = await cli("restart", "alpha", *url)
        assert restarted.returncode == 0, err(restarted)
        stopped = await cli("stop", "beta", *url)
        assert stopped.returncode == 0 and "beta: stop" in out(stopped), out(stopped)
        missing = await cli("start", "nope", *url)
        assert missing.returncode == 1 and out(missing) == ""
        assert err(missing) == "error: no component with id 'nope' (HTTP 404)\n"
        logs = await cli("logs", "alpha", "-n", "2", *url)
        assert logs.returncode == 0 and len(out(logs).splitlines()) == 2, out(logs)
        assert "[supervisor]" in out(logs)
        reloaded = await cli("reload", *url)
        assert reloaded.returncode == 0 and "unchanged: alpha, beta" in out(reloaded)
        watched = await cli("watch", "--count", "2", *url)
        assert watched.returncode == 0, err(watched)
        assert [ln.split()[0] for ln in out(watched).splitlines() if ln].count("ID") == 2
    gone = await cli("status", *url)
    assert gone.returncode == 1 and err(gone).startswith(f"error: cannot reach {srv.url}")
    assert len(err(gone).splitlines()) == 1


async def test_cli_token(tmp_path):
    async with web_server(tmp_path, sleeper("a"), server='token = "t0k"') as srv:
        refused = await cli("status", "--url", srv.url)
        assert refused.returncode == 1 and "HTTP 401" in err(refused)
        flag = await cli("status", "--url", srv.url, "--token", "t0k")
        env = await cli("status", "--url", srv.url, env={"CONTROL_CENTER_TOKEN": "t0k"})
        watch = await cli("watch", "--count", "1", "--url", srv.url, "--token", "t0k")
        watch_refused = await cli("watch", "--count", "1", "--url", srv.url)
    assert flag.returncode == 0 and env.returncode == 0 and watch.returncode == 0
    assert watch_refused.returncode == 1 and "401" in err(watch_refused)


async def test_client_rest_and_filtered_stream(tmp_path):
    async with web_server(tmp_path, sleeper("a") + sleeper("b", autostart=False)) as srv:
        async with Client(srv.url) as cc:
            assert [c["id"] for c in await cc.components()] == ["a", "b"]
            assert (await cc.start("b"))["id"] == "b"
            with pytest.raises(ApiError) as missing:
                await cc.stop("zz")
            assert missing.value.status == 404
            async with cc.snapshots(components=["b"], metrics=["cpu"]) as stream:
                docs = []
                async for doc in stream:
                    docs.append(doc)
                    if len(docs) == 3:
                        break
    assert list(docs[-1]["components"]) == ["b"]
    assert set(docs[-1]["metrics"]) == {"timestamp", "cpu_percent"}


async def listener_closed(port: int) -> None:
    """Return once nothing accepts connections on 127.0.0.1:port."""
    with trio.fail_after(10):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                return
            await stream.aclose()
            await trio.sleep(0.02)


async def test_client_reconnects_after_a_server_restart(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    seen: list[list[str]] = []
    async with web_server(tmp_path / "one", sleeper("first")) as first:
        async with Client(first.url) as cc, cc.snapshots(base_delay=0.05) as stream:
            seen.append(list((await stream.receive())["components"]))
            first.shutdown.set()  # 1001: the client reconnects
            await listener_closed(first.port)
            async with web_server(tmp_path / "two", sleeper("second"), port=first.port):
                with trio.fail_after(10):
                    while "second" not in (ids := list((await stream.receive())["components"])):
                        pass
                seen.append(ids)
    assert seen == [["first"], ["second"]]


async def test_client_does_not_reconnect_after_1008():
    # A peer that refuses us on purpose (as our server does for a flood).
    connections = []

    async def handler(request) -> None:
        ws = await request.accept()
        connections.append(ws)
        await ws.send_message('{"components": {}, "metrics": {}}')
        await ws.aclose(1008, "go away")

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        port = server.port
        async with Client(f"http://127.0.0.1:{port}") as cc:
            docs = []
            with pytest.raises(StreamClosed) as closed:
                async with cc.snapshots(base_delay=0.01) as stream:
                    async for doc in stream:
                        docs.append(doc)
        nursery.cancel_scope.cancel()
    assert closed.value.code == 1008 and "go away" in str(closed.value)
    assert len(docs) == 1 and len(connections) == 1


async def test_client_gives_up_after_max_attempts():
    async with trio.open_nursery() as nursery:
        sock = trio.socket.socket()
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()  # nothing listens there now
        async with Client(f"http://127.0.0.1:{port}") as cc:
            t0 = trio.current_time()
            with pytest.raises(StreamClosed) as gave_up:
                async with cc.snapshots(base_delay=0.01, max_attempts=3) as stream:
                    async for _ in stream:
                        pass
        nursery.cancel_scope.cancel()
    assert "gave up after 3 attempts" in str(gave_up.value)
    assert trio.current_time() - t0 >= 0.01 + 0.02 + 0.04  # 3 s, 6 s, 12 s ... scaled


def test_the_parser_leaves_httpx_to_the_client_commands():
    # httpx (with click and rich, when installed) is 10 MB of a supervisor
    # that never runs a client command: only the commands import it.
    from core import client, client_cli

    assert client_cli.DEFAULT_URL == client.DEFAULT_URL
    code = ("import sys; from core import cli; cli.build_parser(); "
            "sys.exit(1 if 'httpx' in sys.modules else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60)
    assert done.returncode == 0
