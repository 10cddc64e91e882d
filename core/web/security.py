"""Who may talk to the server: token, origin and per-client rate limits.

The token is compared in constant time and never logged. The origin check
protects against cross-site POSTs and WebSocket hijacking from a page the
operator happens to visit: browsers always send `Origin` on those requests,
other clients (curl, the CLI) usually do not, and a missing header passes.
"""

from __future__ import annotations

import hmac
import ipaddress
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


def host_name(host: str) -> str:
    """The name in a Host header, without its port, brackets or final dot."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host[1:]
    if host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    return host.rstrip(".")


def host_ok(host: str | None, allowed: Iterable[str]) -> bool:
    """True when the Host header names this server: an IP address, localhost, or allowed.

    DNS rebinding: a page on a name the attacker controls that resolves to
    127.0.0.1 is same-origin with itself, so the origin check passes; its
    requests still carry that name as Host. An IP literal cannot be rebound,
    so any address passes (a server bound to 0.0.0.0 is reached by its own);
    names must be listed in `[server] allowed_hosts` ("*" allows any).
    A request without Host (HTTP/1.0; browsers always send one) passes.
    """
    if host is None:
        return True
    name = host_name(host)
    allowed = list(allowed)
    if name == "localhost" or name in allowed or "*" in allowed:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_refusal(host: str | None) -> str:
    """The reason given when `host_ok` is False."""
    name = host_name(host or "")
    return (f"Host {name!r} is not a name of this server; add it to [server] allowed_hosts "
            "if it is (DNS rebinding protection)")


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


class Auth:
    """The token check, with failed attempts limited per client address.

    Guessing a token must not go at the speed of the server: past ten
    seconds' worth of failures, an address gets 429 for every request that
    needs the token, whatever it carries, until its bucket refills at
    `rate` per second.
    """

    def __init__(self, token: str | None, *, rate: float = 2.0) -> None:
        self.token = token
        self.failures = RateLimiter(rate, 10 * rate)

    def check(self, given: str | None, address: str) -> tuple[int, str] | None:
        """None when `given` passes; else (401 or 429, the reason)."""
        if self.token is None:
            return None
        if self.failures.blocked(address):
            return 429, "too many failed token attempts from this address; retry later"
        if token_ok(self.token, given):
            return None
        self.failures.allow(address)
        return 401, "missing or wrong token"


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

    def blocked(self, key: str) -> bool:
        """True when `key`'s bucket is empty now (nothing is taken from it)."""
        tokens, last = self._buckets.get(key, (self.burst, trio.current_time()))
        return min(self.burst, tokens + (trio.current_time() - last) * self.rate) < 1.0

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        stale = [k for k, (_, last) in self._buckets.items()
                 if now - last > self._FORGET_AFTER]
        for k in stale:
            del self._buckets[k]
