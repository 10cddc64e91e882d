"""Built-in health checks, run on the event loop: an HTTP GET or a TCP connect.

A `Launch.health` check costs a socket and a few task steps per tick instead
of a worker thread per probe; 200 of them were the largest part of a tick
(70-74 ms through the probe hook's threads).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
import ssl
import subprocess
from urllib.parse import urlsplit

import trio

from core.model import Probe

#: The status line must come within this many bytes.
MAX_HEAD = 8192

_ssl_context: ssl.SSLContext | None = None


@functools.lru_cache(maxsize=4096)
def parse(check: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of a check; ValueError says what is wrong."""
    parts = urlsplit(check)
    if parts.scheme not in ("http", "https", "tcp") or not parts.hostname:
        raise ValueError(f"expected http://, https:// or tcp://host:port, got {check!r}")
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    if port is None:
        raise ValueError(f"a tcp:// check needs a port, got {check!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.scheme, parts.hostname, port, path


async def check(spec: str) -> Probe:
    """Run one check; the caller bounds it in time."""
    scheme, host, port, path = parse(spec)
    try:
        stream: trio.abc.Stream = await _connect(host, port)
    except OSError as exc:
        if scheme == "tcp":
            return Probe(healthy=False, error=f"cannot connect to {host}:{port}: {exc}")
        return Probe(healthy=False, error=f"health check {spec} failed: {exc}")
    async with stream:
        if scheme == "tcp":
            return Probe(healthy=True)
        try:
            return await _get(stream, scheme, host, port, path, spec)
        except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
            return Probe(healthy=False, error=f"health check {spec} failed: {exc}")


@functools.lru_cache(maxsize=4096)
def _ip_family(host: str) -> int | None:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return None


async def _connect(host: str, port: int) -> trio.SocketStream:
    """A TCP connection; an IP address is connected to directly (no resolver, no
    happy-eyeballs nursery: a third of the cost of open_tcp_stream)."""
    family = _ip_family(host)
    if family is None:
        return await trio.open_tcp_stream(host, port)
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def _get(stream: trio.abc.Stream, scheme: str, host: str, port: int, path: str,
               spec: str) -> Probe:
    global _ssl_context
    if scheme == "https":
        if _ssl_context is None:
            _ssl_context = ssl.create_default_context()
        stream = trio.SSLStream(stream, _ssl_context, server_hostname=host)
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
               "User-Agent: control-center-health\r\nConnection: close\r\n\r\n")
    await stream.send_all(request.encode("latin-1"))
    head = b""
    while b"\r\n" not in head and len(head) < MAX_HEAD:
        data = await stream.receive_some(4096)
        if not data:
            break
        head += data
    line = head.split(b"\r\n", 1)[0].split()
    if len(line) < 2 or not line[0].startswith(b"HTTP/") or not line[1].isdigit():
        return Probe(healthy=False, error=f"health check {spec} failed: not an HTTP answer")
    status = int(line[1])
    if 200 <= status < 300:
        return Probe(healthy=True)
    return Probe(healthy=False, error=f"health check {spec} answered {status}")


async def check_command(argv: tuple[str, ...], timeout: float, *, cwd: str,
                        env: dict[str, str]) -> Probe:
    """health_cmd: exit 0 is healthy; else unhealthy with the last line it printed.

    Run with trio's subprocess support (the event loop waits, no thread),
    killed past `timeout`.
    """
    try:
        with trio.move_on_after(timeout) as bounded:
            done = await trio.run_process(list(argv), cwd=cwd, env={**os.environ, **env},
                                          stdin=subprocess.DEVNULL, capture_stdout=True,
                                          stderr=subprocess.STDOUT, check=False)
    except OSError as exc:
        return Probe(healthy=False, error=f"health_cmd {argv[0]}: {exc.strerror or exc}")
    if bounded.cancelled_caught:
        return Probe(healthy=False, error=f"health_cmd did not finish within {timeout:g} s")
    if done.returncode == 0:
        return Probe(healthy=True)
    lines = [ln.strip() for ln in done.stdout.decode(errors="replace").splitlines()
             if ln.strip()]
    reason = lines[-1][:200] if lines else f"exited with status {done.returncode}"
    return Probe(healthy=False, error=f"health_cmd: {reason}")
