"""Who may talk to the server: token, origin and per-client rate limits.

The token is compared in constant time and never logged. The origin check
protects against cross-site POSTs and WebSocket hijacking from a page the
operator happens to visit: browsers always send `Origin` on those requests,
other clients (curl, the CLI) usually do not, and a missing header passes.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs

import trio

#: The cookie a page may carry the token in (for a WebSocket, browsers send
#: cookies but no Authorization header).
TOKEN_COOKIE = "control_center_token"


def request_token(headers: Mapping[str, str], query_string: bytes | str = b"") -> str | None:
    """The token a request carries: `Authorization: Bearer`, `?token=` or the cookie."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if query_string:
        qs = query_string.decode("latin-1") if isinstance(query_string, bytes) else query_string
        values = parse_qs(qs).get("token")
        if values:
            return values[0]
    cookie = headers.get("cookie")
    if cookie:
        try:
            morsel = SimpleCookie(cookie).get(TOKEN_COOKIE)
        except CookieError:
            morsel = None
        if morsel is not None and morsel.value:
            return morsel.value
    return None


def token_ok(expected: str | None, given: str | None) -> bool:
    """True when no token is configured or `given` matches it."""
    if expected is None:
        return True
    if given is None:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def origin_ok(origin: str | None, *, scheme: str, host: str | None,
              allowed: Iterable[str]) -> bool:
    """True when `origin` is absent, the server's own, or allowed by config.

    `scheme` is the page's scheme (http/https; ws maps to http) and `host`
    the request's Host header, so the server's own origin is scheme://Host.
    """
    if origin is None:
        return True
    origin = origin.rstrip("/").lower()
    allowed = [a.rstrip("/").lower() for a in allowed]
    if "*" in allowed or origin in allowed:
        return True
    if host is None:
        return False
    page_scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    return origin == f"{page_scheme}://{host.lower()}"


class RateLimiter:
    """A token bucket per client key: `rate` per second, bursts up to `burst`."""

    #: Buckets idle this long are full again and forgotten (bounded memory).
    _FORGET_AFTER = 60.0

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._last_sweep = 0.0

    def allow(self, key: str) -> bool:
        """Take one token from `key`'s bucket; False when it is empty."""
        now = trio.current_time()
        if now - self._last_sweep > self._FORGET_AFTER:
            self._sweep(now)
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        stale = [k for k, (_, last) in self._buckets.items()
                 if now - last > self._FORGET_AFTER]
        for k in stale:
            del self._buckets[k]
