"""Floods against a real `python -m core`: /healthz latency before and during each.

    .venv/bin/python bench/flood.py
    .venv/bin/python bench/flood.py --seconds 5 --silent-rate 800

One core on 127.0.0.1 (one sleeping component). For each attack, a prober
in this process times `GET /healthz` (a new connection each, every 20 ms)
while the attack runs from a child process, and the table gives p50/p99/max
against the quiet baseline measured in the same run:
- control frames: one WebSocket connection sending pongs as fast as the
  socket takes them (it must be closed with 1008; the time to close is shown);
- empty fragments: the same with empty continuation frames;
- silent connections: `--silent-rate` connections a second that never send
  a byte;
- idle: 5,000 connections opened and held silent.
Every loop is bounded in time and count.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))] if values else 0.0


def start_core(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    config = tmp / "config.toml"
    config.write_text(
        '[server]\nhost = "127.0.0.1"\nport = 0\ninterval = 0.5\n'
        f'data_dir = "{tmp}/data"\nlog_dir = "{tmp}/logs"\n\n'
        '[components.a]\nplugin = "process"\n'
        f'command = ["{sys.executable}", "-c", "import time; time.sleep(3600)"]\n')
    out = (tmp / "output.txt").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "core", "--config", str(config)], cwd=ROOT,
                            stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = (tmp / "output.txt").read_text(errors="replace")
        if "dashboard: http://127.0.0.1:" in text:
            return proc, int(text.split("dashboard: http://127.0.0.1:")[1].split("/")[0])
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("python -m core did not start:\n" + text)


def probe(port: int, seconds: float) -> list[float]:
    """GET /healthz on a new connection every 20 ms for `seconds`: latencies in ms."""
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            out.append((time.perf_counter() - t0) * 1000)
        except OSError:
            out.append(10_000.0)
        finally:
            conn.close()
        time.sleep(0.02)
    return out


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)])
    return head + b"\0\0\0\0" + payload  # a zero mask: the payload as is


# -- attacks (each runs in its own process: `flood.py attack NAME PORT SECONDS`) ---------

def attack_frames(port: int, seconds: float, one: bytes, prefix: bytes = b"") -> dict[str, Any]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    got = b""
    while b"\r\n\r\n" not in got:
        got += sock.recv(65536)
    sock.sendall(prefix)
    burst, sent, code = one * 1000, 0, None
    started = time.monotonic()
    sock.setblocking(False)
    while time.monotonic() - started < seconds and code is None:
        try:
            sent += sock.send(burst) // len(one)
        except BlockingIOError:
            pass
        except OSError:
            break
        try:
            data = sock.recv(1 << 16)
            if not data:
                break
            got += data
            at = got.find(b"\x88")
            if at >= 0 and len(got) >= at + 4:
                code = struct.unpack("!H", got[at + 2:at + 4])[0]
        except BlockingIOError:
            pass
        except OSError:
            break
    took = time.monotonic() - started
    sock.close()
    return {"frames_sent": sent, "close_code": code, "closed_after_s": round(took, 3)}


def attack_silent(port: int, seconds: float, rate: float) -> dict[str, Any]:
    held: list[socket.socket] = []
    started, opened = time.monotonic(), 0
    while time.monotonic() - started < seconds:
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.connect_ex(("127.0.0.1", port))
            held.append(sock)
            opened += 1
        except OSError:
            sock.close()
        time.sleep(max(0.0, started + opened / rate - time.monotonic()))
        if len(held) > 4000:  # bounded: the oldest go
            held.pop(0).close()
    for sock in held:
        sock.close()
    return {"opened": opened, "per_second": round(opened / seconds)}


def attack_idle(port: int, seconds: float, n: int = 5000) -> dict[str, Any]:
    held = []
    for _ in range(n):
        try:
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            break
    time.sleep(seconds)
    for sock in held:
        sock.close()
    return {"opened": len(held)}


def run_attack(name: str, port: int, seconds: float, rate: float) -> dict[str, Any]:
    if name == "control frames":
        return attack_frames(port, seconds, frame(0xA, b"pong"))
    if name == "empty fragments":
        return attack_frames(port, seconds, frame(0x0, b"", fin=False),
                             prefix=frame(0x1, b"{", fin=False))
    if name == "silent connections":
        return attack_silent(port, seconds, rate)
    return attack_idle(port, seconds)


ATTACKS = ["control frames", "empty fragments", "silent connections", "idle connections"]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "attack":
        import resource
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        print(json.dumps(run_attack(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]),
                                    float(sys.argv[5]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--silent-rate", type=float, default=800.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_core(Path(tmp))
        try:
            time.sleep(1)
            base = probe(port, args.seconds)
            print(f"# {os.cpu_count()} cores; /healthz on a new connection every 20 ms")
            print("| attack | /healthz p50 / p99 / max (ms) | p99 vs quiet | attack |")
            print("|---|---|---|---|")
            print(f"| none (quiet) | {pct(base, 50):.1f} / {pct(base, 99):.1f} / "
                  f"{max(base):.1f} | 1.0x | |", flush=True)
            for name in ATTACKS:
                child = subprocess.Popen([sys.executable, __file__, "attack", name, str(port),
                                          str(args.seconds), str(args.silent_rate)],
                                         stdout=subprocess.PIPE, text=True)
                time.sleep(0.2)
                during = probe(port, args.seconds)
                result = json.loads(child.communicate(timeout=args.seconds + 120)[0])
                print(f"| {name} | {pct(during, 50):.1f} / {pct(during, 99):.1f} / "
                      f"{max(during):.1f} | {pct(during, 99) / pct(base, 99):.1f}x | "
                      f"{json.dumps(result)} |", flush=True)
                time.sleep(1)
            alive = proc.poll() is None
            print(f"\nsupervisor alive after all: {alive}")
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
