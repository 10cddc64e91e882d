"""A workload generator: learns and queries through the Sutra API at a steady rate.

    python -m plugins.api.workload --url http://127.0.0.1:7702 --rate 4

Each tick is one request: mostly learns of generated sentences (some linked
to a concept learned earlier), the rest queries and fetches, so the
dashboard's concept counts, qps and latency move on a fresh start. While the
API is unreachable it logs once and keeps trying at the same pace.
`--count` / `--duration` bound a run (tests, benchmarks); SIGTERM exits 0.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import threading
import time
from typing import Any
from urllib.parse import quote

from plugins.jsonhttp import JSONClient, Unreachable

VOCABULARY = """
river mountain forest ocean desert valley glacier canyon meadow island
energy matter signal pattern memory language number theory circuit engine
learning reasoning vision planning attention inference feedback control
protein neuron cell enzyme genome virus bacteria tissue organ membrane
market price trade credit labour capital supply demand contract policy
orbit planet comet galaxy nebula photon gravity quasar telescope eclipse
""".split()
assert len(set(VOCABULARY)) == len(VOCABULARY)


def sentence(rng: random.Random) -> str:
    return " ".join(rng.sample(VOCABULARY, rng.randint(4, 8)))


def run(url: str, rate: float, count: int | None, duration: float | None,
        stop: threading.Event, seed: int | None = None) -> dict[str, int]:
    """Send requests until stopped or bounded out; returns counts by outcome."""
    client = JSONClient(url)
    try:
        return _run(client, url, rate, count, duration, stop, random.Random(seed))
    finally:
        client.close()


def _run(client: JSONClient, url: str, rate: float, count: int | None, duration: float | None,
         stop: threading.Event, rng: random.Random) -> dict[str, int]:
    known: list[str] = []
    counts = {"learned": 0, "queried": 0, "fetched": 0, "failed": 0}
    started = time.monotonic()
    down_since: float | None = None
    period = 1.0 / rate
    next_at = started
    sent = 0
    while not stop.is_set():
        if count is not None and sent >= count:
            break
        if duration is not None and time.monotonic() - started >= duration:
            break
        sent += 1
        roll = rng.random()
        try:
            if roll < 0.6 or not known:
                body: dict[str, Any] = {"content": sentence(rng),
                                        "confidence": round(rng.uniform(0.5, 1.0), 2)}
                if known and rng.random() < 0.3:
                    body["related"] = [rng.choice(known)]
                status, answer = client.call("POST", "/learn", body)
                if status == 201:
                    known.append(answer["concept"]["id"])
                    del known[:-1000]
                    counts["learned"] += 1
            elif roll < 0.9:
                words = " ".join(rng.sample(VOCABULARY, 2))
                status, answer = client.call("GET", f"/query?q={quote(words)}&limit=5")
                counts["queried"] += status == 200
            else:
                status, answer = client.call("GET", f"/concepts/{quote(rng.choice(known))}")
                counts["fetched"] += status == 200
            if status >= 400:
                counts["failed"] += 1
                print(f"workload: {status} {answer.get('error', '')}", flush=True)
            if down_since is not None:
                print(f"workload: API back after {time.monotonic() - down_since:.1f} s",
                      flush=True)
                down_since = None
        except Unreachable as exc:
            counts["failed"] += 1
            if down_since is None:
                down_since = time.monotonic()
                print(f"workload: API unreachable at {url}: {exc}; retrying", flush=True)
        if sent % 100 == 0:
            print(f"workload: {sent} requests, {counts}", flush=True)
        # A fixed schedule keeps the rate steady despite slow answers; after a
        # long stall it restarts from now instead of bursting to catch up.
        next_at = max(next_at + period, time.monotonic() - period)
        stop.wait(max(0.0, next_at - time.monotonic()))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plugins.api.workload",
                                     description="Steady learn/query load on the Sutra API.")
    parser.add_argument("--url", default="http://127.0.0.1:7702", help="the API's base URL")
    parser.add_argument("--rate", type=float, default=4.0, help="requests per second")
    parser.add_argument("--count", type=int, default=None, help="stop after N requests")
    parser.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    if not args.rate > 0:
        parser.error("--rate must be > 0")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"workload: {args.rate} requests/s against {args.url}", flush=True)
    counts = run(args.url, args.rate, args.count, args.duration, stop, args.seed)
    print(f"workload: done, {counts}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
