"""A `/ws` client's subscribe message: parsed and checked, nothing applied.

`parse_subscription` turns one client message into a `Subscription` or the
error text the client is sent back (websocket-protocol.md, "Subscribing");
the fan-out (core/web/ws.py) applies a good one to its client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from core.hub import normalise_metrics

#: Longest list in a subscription: more names than a snapshot holds is a
#: client filling the server's memory, not a filter.
MAX_SUBSCRIPTION_NAMES = 2000

_KEYS = frozenset({"type", "components", "metrics", "signed", "events"})


@dataclass(frozen=True, slots=True)
class Subscription:
    """What a client asked for: None for "all" (components, metrics)."""

    components: frozenset[str] | None
    metrics: frozenset[str] | None
    signed: bool
    events: bool


def parse_subscription(data: str | bytes, *, can_sign: bool) -> Subscription | str:
    """One client message as a `Subscription`; or the error text for a bad one.

    `can_sign`: the server has a signing key (a signed subscription needs one).
    """
    try:
        msg = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"expected a JSON object, got invalid JSON: {exc}"
    if not isinstance(msg, dict):
        return f"expected a JSON object, got {type(msg).__name__}"
    kind = msg.get("type")
    if kind != "subscribe":
        return f"unknown message type {kind!r}; expected 'subscribe'"
    parsed: dict[str, frozenset[str] | None] = {}
    for key in ("components", "metrics"):
        value = msg.get(key)
        if value is not None and not (isinstance(value, list)
                                      and all(isinstance(v, str) for v in value)):
            return f"subscribe: {key!r} must be a list of strings"
        if value is not None and len(value) > MAX_SUBSCRIPTION_NAMES:
            return f"subscribe: {key!r} lists more than {MAX_SUBSCRIPTION_NAMES} names"
        parsed[key] = None if value is None else frozenset(value)
    unknown = set(msg) - _KEYS
    if unknown:
        return f"subscribe: unknown keys {sorted(unknown)}"
    signed = msg.get("signed", False)
    if not isinstance(signed, bool):
        return "subscribe: 'signed' must be true or false"
    if signed and not can_sign:
        return "subscribe: signed snapshots need [server] signing_key on the server"
    wants_events = msg.get("events", False)
    if not isinstance(wants_events, bool):
        return "subscribe: 'events' must be true or false"
    metrics = parsed["metrics"]
    return Subscription(components=parsed["components"],
                        metrics=None if metrics is None else normalise_metrics(metrics),
                        signed=signed, events=wants_events)
