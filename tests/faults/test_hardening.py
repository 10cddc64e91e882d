"""What an attack on the local surface found, each as a repro that must now fail.

Each test runs the attack against a real `python -m core` on 127.0.0.1 and
checks the server refused it and went on supervising.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import trio

from .conftest import (
    CoreServer,
    component_table,
    handshake,
    raise_nofile,
    serving,
    ws_client,
)

TOKEN = "a-long-enough-token-for-tests"


def request(srv: CoreServer, method: str, path: str, headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], dict]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        is_json = headers.get("content-type", "").startswith("application/json")
        return resp.status, headers, json.loads(body) if is_json else {}
    finally:
        conn.close()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoreServer]:
    with serving(tmp_path_factory.mktemp("hardening"), component_table("a"), interval=0.5,
                 allowed_hosts=["dashboard.example"]) as server:
        yield server


# -- DNS rebinding ----------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/"), ("GET", "/api/status"), ("GET", "/api/components/a/logs"),
    ("POST", "/api/components/a/stop"), ("GET", "/healthz"), ("GET", "/static/app.js")])
def test_a_foreign_host_name_is_refused_everywhere(srv, method, path):
    status, _, body = request(srv, method, path, {"Host": f"evil.example:{srv.port}"})
    assert status == 403 and "allowed_hosts" in body["error"], (status, body)


def test_the_websocket_handshake_checks_host_too(srv):
    sock, head, rest = handshake(srv.port, extra="Host: evil.example\r\n")
    sock.close()
    # Two Host headers are joined: never "evil.example" alone, and never a 101.
    assert not head.startswith("HTTP/1.1 101"), head
    sock, head, rest = handshake_with_host(srv.port, f"evil.example:{srv.port}")
    try:
        assert head.startswith("HTTP/1.1 403"), head
        assert "allowed_hosts" in rest.decode(errors="replace")
    finally:
        sock.close()


def handshake_with_host(port: int, host: str) -> tuple[socket.socket, str, bytes]:
    """The handshake with `host` as Host, and at least the start of the body after it."""
    sock, head, rest = handshake(port, host=host)
    while len(rest) < 40:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return sock, head, rest


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "dashboard.example",
                                  "DASHBOARD.example.", "10.1.2.3"])
def test_addresses_localhost_and_allowed_names_pass(srv, host):
    status, _, _ = request(srv, "GET", "/api/status", {"Host": f"{host}:{srv.port}"})
    assert status == 200, host


# -- framing ------------------------------------------------------------------------------

def test_every_response_forbids_framing_and_foreign_scripts(srv):
    for path in ("/", "/api/status", "/nope"):
        _, headers, _ = request(srv, "GET", path)
        assert headers["x-frame-options"] == "DENY", path
        csp = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, path


# -- subscriptions ----------------------------------------------------------------------

def test_distinct_subscription_floods_leave_memory_flat(tmp_path):
    # Ten clients subscribe again and again, as fast as the message rate lets
    # them, each time with a large filter no other client shares. One tick
    # (2 s) sees hundreds of distinct filters: the cache of filtered texts
    # must not keep them all (it once took RSS from 113 MB to 605 MB).
    with serving(tmp_path, component_table("a"), interval=2.0) as srv:
        server = psutil.Process(srv.proc.pid)

        async def flood(n: int, batch: int) -> None:
            async with ws_client(srv.ws_url) as ws:
                await ws.get_message()
                for round_ in range(40):
                    names = [f"component-{batch}-{n}-{round_}-{i:05d}" for i in range(1999)]
                    await ws.send_message(json.dumps({"type": "subscribe",
                                                      "components": [*names, "a"]}))
                    await ws.get_message()

        async def main(batch: int) -> None:
            async with trio.open_nursery() as nursery:
                for n in range(10):
                    nursery.start_soon(flood, n, batch)

        trio.run(main, 0)  # warm-up: the interpreter's own pools grow once
        before = server.memory_info().rss
        for batch in (1, 2):
            trio.run(main, batch)
        grown = (server.memory_info().rss - before) / 2**20
    assert grown < 20, f"RSS grew {grown:.0f} MB under distinct subscriptions"


def test_a_subscription_list_is_bounded(srv):
    async def main() -> dict:
        async with ws_client(srv.ws_url) as ws:
            await ws.get_message()
            await ws.send_message(json.dumps({"type": "subscribe",
                                              "components": [str(i) for i in range(2001)]}))
            while True:
                reply = json.loads(await ws.get_message())
                if reply.get("type") == "error":
                    return reply

    assert "more than 2000 names" in trio.run(main)["error"]


# -- failed authentication ----------------------------------------------------------------

def test_failed_tokens_are_limited_per_address(tmp_path):
    with serving(tmp_path, component_table("a"), token=TOKEN) as srv:
        statuses = []
        for _ in range(40):
            status, headers, _ = request(srv, "GET", "/api/status",
                                         {"Authorization": "Bearer guess"})
            statuses.append(status)
        assert statuses[:10] == [401] * 10
        assert statuses[-1] == 429 and headers["retry-after"]
        # Locked out: even the right token waits (else guessing would go on at full speed).
        status, _, _ = request(srv, "GET", "/api/status", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 429
        sock, head, _ = handshake_with_host(srv.port, "127.0.0.1")
        sock.close()
        assert head.startswith("HTTP/1.1 429"), head
        deadline = time.monotonic() + 10
        while request(srv, "GET", "/api/status",
                      {"Authorization": f"Bearer {TOKEN}"})[0] != 200:
            assert time.monotonic() < deadline, "the lockout never ended"
            time.sleep(0.25)


# -- descriptors: idle and silent connections -------------------------------------------

def _idle_sockets(port: int, n: int) -> list[socket.socket]:
    """Open `n` connections that never send a byte (as fast as the kernel takes them)."""
    opened = []
    for _ in range(n):
        sock = socket.socket()
        sock.settimeout(5)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        opened.append(sock)
    return opened


def _supervising(srv: CoreServer, cid: str = "a") -> None:
    """The child of `cid` killed with SIGKILL is replaced: the tick and spawns still work."""
    def pid() -> int | None:
        status, _, body = request(srv, "GET", f"/api/components/{cid}")
        return body.get("pid") if status == 200 else None

    deadline = time.monotonic() + 20
    while (old := _retrying(pid, deadline)) is None:
        time.sleep(0.1)
    os.kill(old, signal.SIGKILL)
    while _retrying(pid, deadline) in (None, old):
        assert time.monotonic() < deadline, "the killed child was never replaced"
        time.sleep(0.1)


def _retrying(fn: Any, deadline: float) -> Any:
    while True:
        try:
            return fn()
        except OSError:
            assert time.monotonic() < deadline, "the server stopped answering"
            time.sleep(0.1)


def test_idle_connections_past_the_descriptor_limit_do_not_kill_the_supervisor(tmp_path):
    # 1,000 silent sockets against a supervisor limited to 512 descriptors:
    # it once died of EMFILE in the tick's /proc scan, stopping every component.
    raise_nofile(4096)
    limit = (512, 512)
    with serving(tmp_path, component_table("a"), preexec_fn=lambda: resource.setrlimit(
            resource.RLIMIT_NOFILE, limit)) as srv:
        idle = _idle_sockets(srv.port, 1000)
        try:
            assert srv.alive(), srv.output()
            _supervising(srv)
        finally:
            for sock in idle:
                sock.close()
        assert "refusing connections" in srv.output()
        assert "Too many open files" not in srv.output(), srv.output()


def test_five_thousand_idle_connections_at_the_default_limits(tmp_path):
    raise_nofile(8192)
    with serving(tmp_path, component_table("a")) as srv:
        idle = _idle_sockets(srv.port, 5000)
        try:
            assert len(idle) == 5000
            started = time.monotonic()
            assert request(srv, "GET", "/healthz")[0] == 200
            assert time.monotonic() - started < 2
            _supervising(srv)
        finally:
            for sock in idle:
                sock.close()
        assert "Traceback" not in srv.output(), srv.output()


def test_silent_connections_are_dropped_and_take_no_turn(tmp_path):
    with serving(tmp_path, component_table("a"), max_connections=100) as srv:
        idle = _idle_sockets(srv.port, 60)  # past half the cap: under pressure
        try:
            # Others are served at once: the silent ones hold no parsing place.
            started = time.monotonic()
            assert request(srv, "GET", "/healthz")[0] == 200
            assert time.monotonic() - started < 1
            # Under pressure the wait for a first byte is short: they are closed.
            for sock in idle:
                sock.settimeout(5)
                assert sock.recv(1) == b""
        finally:
            for sock in idle:
                sock.close()


# -- the token kept out of config.toml --------------------------------------------------

def test_token_file_is_the_token_and_mistakes_name_the_key(tmp_path):
    from core.config import load
    from core.errors import ConfigError

    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    path = tmp_path / "config.toml"
    path.write_text('[server]\ntoken_file = "token"\n')
    assert load(path).server.token == TOKEN
    for text, words in (('token = "x"\ntoken_file = "token"', "set one"),
                        ('token_file = "missing"', "cannot read"),
                        ('token_file = "empty"', "is empty")):
        (tmp_path / "empty").write_text("\n")
        path.write_text(f"[server]\n{text}\n")
        with pytest.raises(ConfigError) as refused:
            load(path)
        assert "server.token_file" in str(refused.value) and words in str(refused.value)


def test_a_token_from_a_file_guards_the_api(tmp_path):
    (tmp_path / "token").write_text(TOKEN)
    with serving(tmp_path, component_table("a"), token_file=str(tmp_path / "token")) as srv:
        assert request(srv, "GET", "/api/status")[0] == 401
        assert request(srv, "GET", "/api/status", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert TOKEN not in srv.output()


# -- the operator's terminal ------------------------------------------------------------

def _logs_on_a_terminal(srv: CoreServer, *extra: str) -> bytes:
    """`python -m core logs a` with its stdout on a pseudo-terminal: what it wrote."""
    import pty
    import subprocess

    main, child = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "core", "logs", "a", "--url",
                               f"http://127.0.0.1:{srv.port}", *extra],
                              stdout=child, stderr=subprocess.PIPE, timeout=30, check=True)
        assert proc.returncode == 0
        os.close(child)
        child = -1
        out = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        if child >= 0:
            os.close(child)
        os.close(main)


def test_cli_logs_escape_terminal_controls_unless_raw(tmp_path):
    hostile = ("import sys, time; sys.stdout.write('before\\x1b]52;c;aGk=\\x07'"
               "'\\rINFO supervisor: all good\\n'); sys.stdout.flush(); time.sleep(600)")
    with serving(tmp_path, component_table("a", command=[sys.executable, "-c", hostile])
                 ) as srv:
        deadline = time.monotonic() + 10
        while b"before" not in (out := _logs_on_a_terminal(srv)):
            assert time.monotonic() < deadline, out
            time.sleep(0.2)
        raw = _logs_on_a_terminal(srv, "--raw")
    assert b"\x1b" not in out and b"\\x1b]52" in out and b"\\x0dINFO" in out, out
    assert b"\x1b]52" in raw


# -- children's environments and impossible configs --------------------------------------

def test_the_supervisors_token_does_not_reach_its_children(tmp_path, monkeypatch):
    out = tmp_path / "env.json"
    dump = ("import json, os, time; json.dump(dict(os.environ), open(" + repr(str(out)) +
            ", 'w')); time.sleep(600)")
    monkeypatch.setenv("CONTROL_CENTER_TOKEN", "the-operators-cli-token")
    with serving(tmp_path, component_table("a", command=[sys.executable, "-c", dump])):
        deadline = time.monotonic() + 10
        while not out.exists() or not out.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.1)
        env = json.loads(out.read_text())
    assert "CONTROL_CENTER_TOKEN" not in env
    assert env["CONTROL_CENTER_CHILD"]  # the marker is still there


@pytest.mark.parametrize(("table", "where"), [
    ('env = { "A=B" = "x" }', "components.a.env.A=B"),
    ('env = { A = "x\\u0000y" }', "components.a.env.A"),
    ('command = ["/bin/echo", "a\\u0000b"]', "components.a.command[1]")])
def test_check_refuses_what_no_process_could_have(tmp_path, table, where):
    import subprocess

    config = tmp_path / "config.toml"
    command = "" if table.startswith("command") else 'command = ["/bin/true"]\n'
    config.write_text(f'[components.a]\nplugin = "process"\n{command}{table}\n')
    out = subprocess.run([sys.executable, "-m", "core", "check", str(config)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out.stdout
    assert where in out.stderr, out.stderr
    assert "NUL" in out.stderr or "'='" in out.stderr, out.stderr


def test_spawns_out_of_descriptors_fail_their_component_not_the_supervisor(tmp_path):
    # 64 descriptors for 12 children, five each: some spawns find too few
    # left. Those components fail with the reason (and are retried); the
    # supervisor logs it, goes on, and stops cleanly.
    limit = (64, 64)
    comps = "".join(component_table(f"c{i:02d}", backoff_initial=0.2, max_failures=1000)
                    for i in range(12))
    srv = start_core_limited(tmp_path, comps, limit)
    try:
        deadline = time.monotonic() + 15
        while "file descriptors left" not in srv.output() \
                and "Too many open files" not in srv.output():
            assert time.monotonic() < deadline, srv.output()
            time.sleep(0.2)
        time.sleep(2)
        assert srv.alive(), srv.output()
        assert "Traceback" not in srv.output(), srv.output()
    finally:
        assert srv.stop() == 0, srv.output()


def start_core_limited(tmp_path: Any, comps: str, limit: tuple[int, int]) -> CoreServer:
    from .conftest import start_core

    return start_core(tmp_path, comps, preexec_fn=lambda: resource.setrlimit(
        resource.RLIMIT_NOFILE, limit))
