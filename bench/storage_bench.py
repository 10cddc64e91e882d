"""Write and read throughput of the reference storage engine.

    .venv/bin/python bench/storage_bench.py [--seconds 5] [--threads 4] [--sync full]

Starts a real engine on a free loopback port with a fresh data directory,
then runs closed-loop clients on keep-alive connections, each phase bounded
by --seconds: writes (POST /concepts), then fetches (GET /concepts/{id}),
then searches (GET /search). Prints requests/s and latency percentiles.
The clients are threads of this process: on a small machine they compete
with the engine for the CPU, so the figures are a floor, not a ceiling.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("river mountain forest ocean signal pattern memory neuron galaxy photon market "
         "price orbit planet engine circuit theory protein enzyme genome").split()


@contextmanager
def service(argv: list[str], log: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Run `python -m <argv>` until the block ends; yields (process, announced port)."""
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", *argv], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            first, newline, _ = log.read_text().partition("\n")
            if newline:
                yield proc, int(first.split("listening on http://")[1].split()[0].rsplit(":")[1])
                break
            if proc.poll() is not None:
                raise SystemExit(f"{argv[0]} exited: {log.read_text()}")
            time.sleep(0.02)
        else:
            raise SystemExit(f"{argv[0]} did not start: {log.read_text()}")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)


Request = Callable[[random.Random], tuple[str, str, bytes | None]]


def closed_loop(port: int, make: Request, seconds: float, threads: int,
                expect: int) -> dict[str, float]:
    """`threads` clients send requests back to back for `seconds`; latency figures."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    stop_at = time.monotonic() + seconds

    def client(n: int) -> None:
        rng = random.Random(n)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine = latencies[n]
        try:
            while time.monotonic() < stop_at:
                method, path, body = make(rng)
                start = time.perf_counter()
                conn.request(method, path, body=body)
                resp = conn.getresponse()
                resp.read()
                mine.append(time.perf_counter() - start)
                if resp.status != expect:
                    errors[n] += 1
        finally:
            conn.close()

    workers = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    every = sorted(x for mine in latencies for x in mine)
    if not every:
        return {"requests": 0, "per_second": 0.0, "errors": sum(errors)}

    def pct(p: float) -> float:
        return every[min(len(every) - 1, int(p / 100 * len(every)))] * 1000

    return {"requests": len(every), "per_second": len(every) / elapsed,
            "p50_ms": pct(50), "p99_ms": pct(99), "mean_ms": statistics.fmean(every) * 1000,
            "errors": sum(errors)}


def sentence(rng: random.Random) -> str:
    return " ".join(rng.sample(WORDS, 6))


def report(name: str, figures: dict[str, float]) -> None:
    print(f"{name:<34} {figures['requests']:>7.0f} req {figures['per_second']:>9.1f}/s  "
          f"p50 {figures.get('p50_ms', 0):>6.2f} ms  p99 {figures.get('p99_ms', 0):>7.2f} ms  "
          f"errors {figures['errors']:.0f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    parser.add_argument("--threads", type=int, default=4, help="concurrent clients")
    parser.add_argument("--sync", choices=("full", "normal"), default="full")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="storage-bench-") as tmp:
        data = Path(tmp) / "data"
        with service(["plugins.storage.engine", "--data-dir", str(data), "--port", "0",
                      "--sync", args.sync], Path(tmp) / "engine.log") as (proc, port):
            print(f"storage engine pid {proc.pid}, sync={args.sync}, {args.threads} clients, "
                  f"{args.seconds:g} s per phase, {os.cpu_count()} CPUs", flush=True)
            ids: list[str] = []

            def learn(rng: random.Random) -> tuple[str, str, bytes | None]:
                return "POST", "/concepts", json.dumps({"content": sentence(rng)}).encode()

            report("write (POST /concepts), 1 client",
                   closed_loop(port, learn, args.seconds, 1, 201))
            report(f"write (POST /concepts), {args.threads} clients",
                   closed_loop(port, learn, args.seconds, args.threads, 201))
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/search?q=" + "+".join(WORDS[:3]) + "&limit=1000")
            ids = [r["id"] for r in json.loads(conn.getresponse().read())["results"]]
            conn.request("GET", "/stats")
            stats = json.loads(conn.getresponse().read())
            conn.close()

            def fetch(rng: random.Random) -> tuple[str, str, bytes | None]:
                return "GET", f"/concepts/{rng.choice(ids)}", None

            def search(rng: random.Random) -> tuple[str, str, bytes | None]:
                return "GET", "/search?q=" + "+".join(rng.sample(WORDS, 2)) + "&limit=10", None

            report(f"read (GET /concepts/id), {args.threads} clients",
                   closed_loop(port, fetch, args.seconds, args.threads, 200))
            report(f"search (GET /search), {args.threads} clients",
                   closed_loop(port, search, args.seconds, args.threads, 200))
            print(f"store: {stats['total_concepts']} concepts, {stats['total_associations']} "
                  f"associations, {stats['storage_size_mb']} MB on disk (WAL included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
