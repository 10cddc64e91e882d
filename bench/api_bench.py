"""Latency of the Sutra API in front of a real storage engine.

    .venv/bin/python bench/api_bench.py [--seconds 5] [--threads 4] [--preload 1000]

Starts a storage engine and the API on free loopback ports, preloads
concepts, then measures each endpoint for --seconds with one client (the
latency a single caller sees) and with --threads concurrent clients (the
throughput), on keep-alive connections. Prints p50/p99 latency and
requests/s, then the API's own /stats figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sys
import tempfile
from pathlib import Path

from storage_bench import WORDS, closed_loop, report, sentence, service


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    parser.add_argument("--threads", type=int, default=4, help="concurrent clients")
    parser.add_argument("--preload", type=int, default=1000, help="concepts learned first")
    parser.add_argument("--sync", choices=("full", "normal"), default="full")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="api-bench-") as tmp:
        base = Path(tmp)
        with service(["plugins.storage.engine", "--data-dir", str(base / "data"), "--port", "0",
                      "--sync", args.sync], base / "engine.log") as (engine, storage_port), \
             service(["plugins.api.server", "--port", "0", "--storage-url",
                      f"http://127.0.0.1:{storage_port}"], base / "api.log") as (api, port):
            print(f"engine pid {engine.pid} (sync={args.sync}), api pid {api.pid}, "
                  f"{args.seconds:g} s per phase, {os.cpu_count()} CPUs", flush=True)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            rng = random.Random(1)
            ids = []
            for _ in range(args.preload):
                conn.request("POST", "/learn", body=json.dumps({"content": sentence(rng)}))
                ids.append(json.loads(conn.getresponse().read())["concept"]["id"])

            def learn(r: random.Random) -> tuple[str, str, bytes | None]:
                return "POST", "/learn", json.dumps({"content": sentence(r)}).encode()

            def query(r: random.Random) -> tuple[str, str, bytes | None]:
                return "GET", "/query?q=" + "+".join(r.sample(WORDS, 2)) + "&limit=10", None

            def get(r: random.Random) -> tuple[str, str, bytes | None]:
                return "GET", f"/concepts/{r.choice(ids)}", None

            for name, make, expect in (("learn (POST /learn)", learn, 201),
                                       ("query (GET /query)", query, 200),
                                       ("get (GET /concepts/id)", get, 200)):
                report(f"{name}, 1 client", closed_loop(port, make, args.seconds, 1, expect))
                report(f"{name}, {args.threads} clients",
                       closed_loop(port, make, args.seconds, args.threads, expect))
            conn.request("GET", "/stats")
            stats = json.loads(conn.getresponse().read())
            conn.close()
            print(f"api /stats: {stats['requests_served']} requests served, "
                  f"{stats['queries_per_second']} qps and {stats['avg_latency_ms']} ms "
                  f"average over the last {stats['window_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
