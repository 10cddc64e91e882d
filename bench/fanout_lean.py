"""Fan-out at up to 10,000 clients: our server beside the bare trio-websocket
broadcaster, in one run, with a lean load client.

    .venv/bin/python bench/fanout_lean.py                    # N = 100 1000 2000 5000 10000
    .venv/bin/python bench/fanout_lean.py -n 10000 --seconds 20 --shards 2

At 10,000 clients a Python client library would be what is measured, so the
clients here are raw non-blocking sockets on one `epoll` per process,
sharded over `--shards` processes: the handshake, then only frame headers
are parsed and each snapshot's `metrics.timestamp` read. Lag is the time the
frame's first bytes reached the client's kernel (`SO_TIMESTAMP`, however
late the shard reads them) minus that timestamp; each client's on-connect
snapshot is left out. A tick is lost when a client's inter-arrival exceeds
1.5 intervals. This process samples the server's CPU and RSS (psutil), the
shards' own CPU (reported as the harness's), and `GET /api/status` latency
(new connection each) while the clients are connected.

Servers: bench/fanout_server.py (ours: core.web.serve) and
bench/bare_broadcaster.py (one `send_message` per client per tick). Both bind
127.0.0.1 and raise RLIMIT_NOFILE to the hard limit; every wait is bounded.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import itertools
import json
import os
import re
import resource
import select
import socket
import statistics
import struct
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

BENCH = Path(__file__).resolve().parent
SERVERS = {"ours": BENCH / "fanout_server.py", "bare": BENCH / "bare_broadcaster.py"}
SO_TIMESTAMP = getattr(socket, "SO_TIMESTAMP", 29)
_TIMEVAL = struct.Struct("@ll")
_ANCILLARY = socket.CMSG_SPACE(_TIMEVAL.size)
_STAMP = re.compile(rb'"timestamp": "([^"]+)"')
#: Handshakes in flight per shard while connecting.
IN_FLIGHT = 200


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- shard mode: one process, n clients, one epoll ---------------------------------

class _Conn:
    __slots__ = ("arrivals", "buf", "first", "handshaken", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.handshaken = False
        self.first: float | None = None  # kernel time of the frame at the front of buf
        self.arrivals: list[tuple[float, float]] = []  # (kernel time, snapshot stamp)


def _stamp(payload: bytes) -> float:
    found = _STAMP.search(payload, 0, 4096) or _STAMP.search(payload)
    if found is None:
        return float("nan")
    return datetime.fromisoformat(found.group(1).decode().replace("Z", "+00:00")).timestamp()


def _frames(conn: _Conn, kernel: float) -> None:
    buf = conn.buf
    while len(buf) >= 2:
        length, at = buf[1] & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                break
            length, at = struct.unpack_from("!H", buf, 2)[0], 4
        elif length == 127:
            if len(buf) < 10:
                break
            length, at = struct.unpack_from("!Q", buf, 2)[0], 10
        if len(buf) < at + length:
            break
        if buf[0] & 0x0F == 0x1:
            conn.arrivals.append((conn.first or kernel, _stamp(buf[at:at + length])))
        buf = buf[at + length:]
        conn.first = kernel if buf else None
    conn.buf = buf


def run_shard(port: int, n: int, seconds: float) -> dict[str, Any]:
    raise_nofile()
    ep = select.epoll()
    conns: dict[int, _Conn] = {}
    pending = n
    failures = 0
    started = time.monotonic()
    request = (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Key: ").encode()

    def open_one() -> None:
        nonlocal failures
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
        try:
            sock.connect(("127.0.0.1", port))
            key = base64.b64encode(os.urandom(16))
            sock.sendall(request + key + b"\r\n\r\n")
        except OSError:
            failures += 1
            sock.close()
            return
        sock.setblocking(False)
        conns[sock.fileno()] = _Conn(sock)
        ep.register(sock.fileno(), select.EPOLLIN)

    in_handshake = 0
    connected_at: float | None = None
    deadline = started + 120 + seconds  # connecting is bounded too
    window_end: float | None = None
    while time.monotonic() < deadline:
        while pending and in_handshake < IN_FLIGHT:
            open_one()
            pending -= 1
            in_handshake += 1
        if connected_at is None and not pending and in_handshake == 0:
            connected_at = time.monotonic()
            window_end = connected_at + seconds
            print(json.dumps({"connected": len(conns)}), flush=True)
        if window_end is not None and time.monotonic() >= window_end:
            break
        for fd, _ev in ep.poll(0.05):
            conn = conns.get(fd)
            if conn is None:
                continue
            try:
                data, anc, _flags, _addr = conn.sock.recvmsg(1 << 17, _ANCILLARY)
            except BlockingIOError:
                continue
            except OSError:
                data, anc = b"", []
            kernel = time.time()
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMP:
                    sec, usec = _TIMEVAL.unpack_from(raw)
                    kernel = sec + usec / 1e6
            if not data:
                ep.unregister(fd)
                conn.sock.close()
                del conns[fd]
                failures += 1
                if not conn.handshaken:
                    in_handshake -= 1
                continue
            if not conn.buf:
                conn.first = kernel
            conn.buf += data
            if not conn.handshaken:
                head, sep, rest = conn.buf.partition(b"\r\n\r\n")
                if not sep:
                    continue
                in_handshake -= 1
                if not head.startswith(b"HTTP/1.1 101"):
                    ep.unregister(fd)
                    conn.sock.close()
                    del conns[fd]
                    failures += 1
                    continue
                conn.handshaken = True
                conn.buf = rest
                conn.first = kernel if rest else None
            _frames(conn, kernel)
    lags: list[float] = []
    gaps: list[float] = []
    per_client: list[int] = []
    for conn in conns.values():
        arrivals = conn.arrivals[1:]  # the on-connect snapshot is not a tick
        per_client.append(len(arrivals))
        lags += [k - s for k, s in arrivals]
        gaps += [b[0] - a[0] for a, b in itertools.pairwise(arrivals)]
        conn.sock.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"connected": len(conns), "failures": failures, "lags": lags, "gaps": gaps,
            "per_client_min": min(per_client, default=0),
            "cpu_s": usage.ru_utime + usage.ru_stime}


# -- driver ---------------------------------------------------------------------------

def status_latency(port: int, count: int, spread: float) -> tuple[list[float], list[float]]:
    """GET /api/status timings in ms: (each on a new connection, on one kept alive)."""
    fresh: list[float] = []
    kept: list[float] = []
    alive = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(count):
            for out, conn in ((fresh, None), (kept, alive)):
                t0 = time.perf_counter()
                c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                try:
                    c.request("GET", "/api/status")
                    resp = c.getresponse()
                    resp.read()
                    if resp.status == 200:
                        out.append((time.perf_counter() - t0) * 1000)
                except OSError:
                    pass
                finally:
                    if conn is None:
                        c.close()
            time.sleep(spread)
    finally:
        alive.close()
    return fresh, kept


def measure(kind: str, n: int, shards: int, seconds: float, interval: float) -> dict[str, Any]:
    server = subprocess.Popen([sys.executable, str(SERVERS[kind]), "--interval", str(interval)],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())  # type: ignore[union-attr]
        proc = psutil.Process(server.pid)
        rss_before = proc.memory_info().rss / 2**20
        sizes = [n // shards + (1 if i < n % shards else 0) for i in range(shards)]
        workers = [subprocess.Popen([sys.executable, __file__, "shard", str(port), str(size),
                                     str(seconds)], stdout=subprocess.PIPE, text=True)
                   for size in sizes if size]
        for w in workers:  # each prints once its clients are connected
            w.stdout.readline()  # type: ignore[union-attr]
        # Server CPU over the first half of the window, with nothing but the
        # fan-out to do; /api/status is timed in the second half.
        cpu0, t0 = proc.cpu_times(), time.monotonic()
        time.sleep(seconds / 2)
        cpu1, t1 = proc.cpu_times(), time.monotonic()
        rss = proc.memory_info().rss / 2**20
        status, status_kept = (status_latency(port, 40, seconds / 200) if kind == "ours"
                               else ([], []))
        results = [json.loads(w.communicate(timeout=seconds + 180)[0].splitlines()[-1])
                   for w in workers]
        harness_elapsed = time.monotonic() - t0
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    lags = [x for r in results for x in r["lags"]]
    gaps = [x for r in results for x in r["gaps"]]
    elapsed = t1 - t0
    cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system)
    lost = sum(max(0, round(g / interval) - 1) for g in gaps if g > 1.5 * interval)
    return {
        "kind": kind, "n": n, "connected": sum(r["connected"] for r in results),
        "failures": sum(r["failures"] for r in results),
        "min_snapshots": min(r["per_client_min"] for r in results), "lost_ticks": lost,
        "lag_p50_ms": pct(lags, 50) * 1000, "lag_p99_ms": pct(lags, 99) * 1000,
        "lag_max_ms": max(lags, default=float("nan")) * 1000,
        "server_cpu_pct": 100 * cpu / elapsed,
        "server_cpu_ms_per_tick": 1000 * cpu / max(1.0, elapsed / interval),
        "rss_before_mb": rss_before, "rss_mb": rss,
        # The shards' whole life (connecting included) over the window.
        "harness_cpu_pct": 100 * sum(r["cpu_s"] for r in results) / harness_elapsed,
        "status_p50_ms": statistics.median(status) if status else None,
        "status_kept_p50_ms": statistics.median(status_kept) if status_kept else None,
        "status_n": len(status),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "shard":
        port, n, seconds = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
        print(json.dumps(run_shard(port, n, seconds)), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, nargs="+", default=[100, 1000, 2000, 5000, 10000])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="one JSON line per run")
    args = parser.parse_args()
    raise_nofile()
    print(f"# {os.cpu_count()} cores, {args.seconds:g} s per run, interval {args.interval:g} s,"
          f" {args.shards} client processes")
    print("| N | server | connected | lost ticks | lag p50 / p99 / max (ms) | server CPU "
          "(% / ms per tick) | RSS (MB) | harness CPU % | /api/status p50, new / kept-alive "
          "connection (ms) |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows: dict[int, dict[str, dict[str, Any]]] = {}
    for n in args.n:
        for kind in ("ours", "bare"):
            r = measure(kind, n, args.shards, args.seconds, args.interval)
            rows.setdefault(n, {})[kind] = r
            if args.json:
                print(json.dumps(r))
            status = ("-" if r["status_p50_ms"] is None else
                      f"{r['status_p50_ms']:.1f} / {r['status_kept_p50_ms']:.1f}")
            print(f"| {n} | {kind} | {r['connected']} | {r['lost_ticks']} | "
                  f"{r['lag_p50_ms']:.0f} / {r['lag_p99_ms']:.0f} / {r['lag_max_ms']:.0f} | "
                  f"{r['server_cpu_pct']:.0f} / {r['server_cpu_ms_per_tick']:.0f} | "
                  f"{r['rss_before_mb']:.0f} -> {r['rss_mb']:.0f} | "
                  f"{r['harness_cpu_pct']:.0f} | {status} |", flush=True)
        ours, bare = rows[n]["ours"], rows[n]["bare"]
        print(f"|   | ratio | | | p99 ours/bare = "
              f"{ours['lag_p99_ms'] / bare['lag_p99_ms']:.2f} | | | | |", flush=True)


if __name__ == "__main__":
    main()
