"""Who gets a connection on port 9000, and a turn to be parsed.

A supervisor must never die of its clients: every open connection holds a
file descriptor, and the supervisor needs its own (spawning, pidfds, logs,
/proc reads). So connections are capped below the descriptor limit, in
total and per client address; past a cap a connection is closed as soon as
it is accepted, unread. A connection waits for its first byte without
holding anything but its descriptor (silent connections cost no turn), then
queues for one of `ADMITTING` places to have its head parsed. Under
pressure (more than half the cap open) the wait for the first byte shrinks,
so a stream of silent connections ends up holding a fraction of the cap.
(A cap on silent connections per address would refuse honest bursts: one
process opening 300 connections at once is accepted before it writes.)
"""

from __future__ import annotations

import logging
import resource
from collections import Counter

import trio

log = logging.getLogger(__name__)

#: Connections whose request head is being read at the same time. A storm
#: of handshakes is parsed a few dozen at a time, so the tasks that serve
#: connected clients (the tick's fan-out among them) keep their turn in
#: trio's scheduler instead of queueing behind thousands of parsers.
ADMITTING = 32
#: A connection holds its place at most this long: a client that sends its
#: request slowly must not keep others waiting.
ADMISSION_HOLD = 0.05
#: Seconds a new connection may stay silent before its first byte...
FIRST_BYTE_TIMEOUT = 5.0
#: ...and when more than half of `max_connections` are open.
PRESSED_FIRST_BYTE_TIMEOUT = 0.5
#: Descriptors kept for supervision, whatever the clients do.
RESERVED_DESCRIPTORS = 256


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit: (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):
            return soft, soft
        return soft, hard
    return soft, soft


def connection_budget(configured: int, reserved: int = RESERVED_DESCRIPTORS) -> int:
    """The connection cap: `configured` (0 = as many as the descriptors allow), below the limit.

    The reserve is `reserved` descriptors, or a quarter of a small limit.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = max(16, soft - min(reserved, soft // 4))
    return room if configured <= 0 else min(configured, room)


class Gate:
    """Counts open connections by address and hands out parsing turns."""

    def __init__(self, max_connections: int, per_address: int) -> None:
        self.max_connections = max_connections
        self.per_address = per_address or max_connections
        self.open = 0
        self.refused = 0
        self._by_address: Counter[str] = Counter()
        self.places = trio.Semaphore(ADMITTING)
        self._last_warning = -1e9

    def enter(self, address: str) -> str | None:
        """Count a new connection in; the reason it is refused, or None."""
        if self.open >= self.max_connections:
            reason = f"{self.open} connections open ([server] max_connections)"
        elif self._by_address[address] >= self.per_address:
            reason = (f"{self._by_address[address]} connections open from {address} "
                      "([server] max_connections_per_address)")
        else:
            self.open += 1
            self._by_address[address] += 1
            return None
        self.refused += 1
        now = trio.current_time()
        if now - self._last_warning > 10:  # a flood must not flood the log too
            self._last_warning = now
            log.warning("refusing connections: %s (%d refused so far)", reason, self.refused)
        return reason

    def leave(self, address: str) -> None:
        """Count a closed connection out."""
        self.open -= 1
        self._by_address[address] -= 1
        if not self._by_address[address]:
            del self._by_address[address]

    def first_byte_timeout(self) -> float:
        pressed = self.open > self.max_connections // 2
        return PRESSED_FIRST_BYTE_TIMEOUT if pressed else FIRST_BYTE_TIMEOUT
