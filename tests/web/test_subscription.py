"""parse_subscription: each bad message gets its own error text; a good one parses."""

from __future__ import annotations

import json

import pytest

from core.web.subscription import MAX_SUBSCRIPTION_NAMES, Subscription, parse_subscription

BAD = [
    (b"{", "invalid JSON"),
    (b"\xff", "invalid JSON"),
    ("[]", "got list"),
    ('{"type": "hello"}', "unknown message type 'hello'"),
    ('{"type": "subscribe", "components": "a"}', "'components' must be a list of strings"),
    ('{"type": "subscribe", "metrics": [1]}', "'metrics' must be a list of strings"),
    (json.dumps({"type": "subscribe", "components": ["x"] * (MAX_SUBSCRIPTION_NAMES + 1)}),
     "lists more than"),
    ('{"type": "subscribe", "colour": 1}', "unknown keys ['colour']"),
    ('{"type": "subscribe", "signed": 1}', "'signed' must be true or false"),
    ('{"type": "subscribe", "signed": true}', "need [server] signing_key"),
    ('{"type": "subscribe", "events": "yes"}', "'events' must be true or false"),
]


@pytest.mark.parametrize(("data", "error"), BAD)
def test_a_bad_message_gets_its_error(data: str | bytes, error: str) -> None:
    result = parse_subscription(data, can_sign=False)
    assert isinstance(result, str) and error in result


def test_a_good_message_parses() -> None:
    msg = '{"type": "subscribe", "components": ["a", "b"], "signed": true, "events": true}'
    assert parse_subscription(msg, can_sign=True) == Subscription(
        components=frozenset({"a", "b"}), metrics=None, signed=True, events=True)
    assert parse_subscription('{"type": "subscribe"}', can_sign=False) == Subscription(
        components=None, metrics=None, signed=False, events=False)
