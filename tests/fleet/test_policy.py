"""The reconnect schedule, the silence rule and the merge, on trio's fake clock."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing

from core.federation import (
    UNREACHABLE_AFTER,
    Federation,
    Follower,
    describe,
    reconnect_delay,
)
from core.remotes import RemoteConfig

pytestmark = pytest.mark.anyio



@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    """The async tests here run on trio's fake clock: sleeps take no time."""
    return "trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}


REMOTE = RemoteConfig("b", "http://127.0.0.1:1", token="secret-token-never-shown")


def test_reconnect_delays_double_from_3_s_and_stay_at_60_s() -> None:
    delays = [reconnect_delay(n) for n in range(1, 15)]
    assert delays[:5] == [3.0, 6.0, 12.0, 24.0, 48.0]
    assert delays[5:] == [60.0] * 9  # never longer than the steady retry, never giving up


class Scripted(Follower):
    """A follower whose connections are scripted: each attempt's time is recorded."""

    def __init__(self, outcomes: list[str]) -> None:
        super().__init__(REMOTE, Federation({}, "me", 2.0))
        self.outcomes = outcomes
        self.attempts: list[float] = []
        self.states: list[str] = []
        self.done = trio.Event()

    async def _session(self) -> None:
        self.attempts.append(trio.current_time())
        self.states.append(self.state(trio.current_time()))
        if not self.outcomes:
            self.done.set()
            await trio.sleep_forever()
        outcome = self.outcomes.pop(0)
        if outcome == "ok":  # a connection that brought a document, then broke
            self.failures = 0
            raise trio.BrokenResourceError
        raise OSError(111, "Connection refused")


def _run(follower: Scripted) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follower.run)
            await follower.done.wait()
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_the_schedule_on_a_fake_clock_never_gives_up() -> None:
    follower = Scripted(["fail"] * 13)
    _run(follower)
    gaps = [round(b - a, 6) for a, b in zip(follower.attempts, follower.attempts[1:],
                                            strict=False)]
    assert gaps == [3, 6, 12, 24, 48, 60, 60, 60, 60, 60, 60, 60, 60]
    # attempt n comes after n failures: reconnecting, then unreachable from the 10th on
    assert follower.states[0] == "reconnecting"
    assert follower.states[1:UNREACHABLE_AFTER] == ["reconnecting"] * (UNREACHABLE_AFTER - 1)
    assert follower.states[UNREACHABLE_AFTER:] == ["unreachable"] * 4
    assert follower.error == "cannot connect to http://127.0.0.1:1: Connection refused"


def test_a_good_connection_starts_the_schedule_over() -> None:
    follower = Scripted(["fail", "fail", "fail", "ok", "fail", "fail"])
    _run(follower)
    gaps = [round(b - a, 6) for a, b in zip(follower.attempts, follower.attempts[1:],
                                            strict=False)]
    assert gaps == [3, 6, 12, 3, 6, 12]  # the break after a good run counts as the first


def _doc(instance: str, components: dict[str, Any], hosts: Any = None) -> str:
    doc: dict[str, Any] = {"components": components, "metrics": {"cpu_percent": 1.0},
                           "instance": instance}
    if hosts is not None:
        doc["hosts"] = hosts
    return json.dumps(doc)


COMP = {"name": "x", "state": "running", "pid": 1, "uptime": 1.0, "cpu_percent": 0.0,
        "memory_mb": 1.0, "error": None, "last_updated": "2026-01-01T00:00:00.000Z"}


async def test_silent_for_two_intervals_is_error_and_the_next_document_heals() -> None:
    fed = Federation({"b": REMOTE}, "me", 2.0)
    follower = fed.followers["b"]
    follower.ws_open = True
    local = {"components": {"p": COMP}, "metrics": {"cpu_percent": 9.0}}
    for _ in range(3):  # three documents, one per interval
        follower.accept(_doc("b-id", {"x": COMP}), trio.current_time())
        await trio.sleep(2.0)
    doc = fed(local)
    assert doc["components"]["b/x"] == {**COMP, "host": "b"}
    assert doc["hosts"]["b"]["state"] == "connected"
    assert doc["metrics"] == {"cpu_percent": 9.0} and doc["instance"] == "me"

    await trio.sleep(2.01)  # 4.01 s since the last document: 2 intervals and more
    doc = fed(local)
    assert doc["components"]["b/x"]["state"] == "error"
    assert doc["components"]["b/x"]["error"].startswith("host b unreachable since ")
    assert doc["hosts"]["b"]["state"] == "unreachable"
    assert doc["components"]["p"] == COMP  # this machine's own untouched

    follower.accept(_doc("b-id", {"x": COMP}), trio.current_time())
    doc = fed(local)
    assert doc["components"]["b/x"] == {**COMP, "host": "b"}
    assert doc["hosts"]["b"] == {**doc["hosts"]["b"], "state": "connected", "error": None}


async def test_a_chain_is_prefixed_and_loops_are_refused() -> None:
    fed = Federation({"b": REMOTE}, "me", 2.0)
    follower = fed.followers["b"]
    follower.ws_open = True
    nested = {"c": {"state": "connected", "instance": "c-id", "error": None}}
    follower.accept(_doc("b-id", {"y": COMP, "c/x": {**COMP, "host": "c"}}, nested), 0.0)
    doc = fed({"components": {}, "metrics": {}})
    assert doc["components"]["b/c/x"]["host"] == "b/c"
    assert doc["components"]["b/y"]["host"] == "b"
    assert doc["hosts"]["b/c"]["instance"] == "c-id"

    # b follows us back through c: refused, its components gone, the reason shown
    follower.accept(_doc("b-id", {"y": COMP}, {"c/me": {"instance": "me"}}), 0.1)
    doc = fed({"components": {}, "metrics": {}})
    assert doc["components"] == {}
    assert "loop refused: remote b follows this Control Center back" in \
        doc["hosts"]["b"]["error"]
    assert doc["hosts"]["b"]["instance"] == "b-id"  # so that b can see the loop too

    follower.accept(_doc("me", {"y": COMP}), 0.2)
    assert "is this Control Center" in fed({"components": {}, "metrics": {}}
                                          )["hosts"]["b"]["error"]


def test_errors_never_show_the_token() -> None:
    from trio_websocket import ConnectionRejected

    message = describe(ConnectionRejected(401, (), b""), REMOTE)
    assert message == ("the remote refused our token (HTTP 401): check remotes.b.token")
    assert "secret-token" not in repr(REMOTE)


async def test_the_hub_publishes_the_merge_and_keeps_local_history() -> None:
    from core.hub import Hub

    hub = Hub(interval=2.0, history_seconds=0)
    fed = Federation({"b": REMOTE}, "me", 2.0)
    fed.followers["b"].ws_open = True
    fed.followers["b"].accept(_doc("b-id", {"x": COMP}), trio.current_time())
    hub.extender = fed
    snap = hub.publish({"components": {"p": COMP}, "metrics": {}})
    assert set(snap.doc["components"]) == {"p", "b/x"}
    assert json.loads(snap.text)["hosts"]["b"]["state"] == "connected"
    assert set(hub.history()[-1]["components"]) == {"p"}  # bounded whatever the fleet

    def broken(doc: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("a bug in the merge")

    hub.extender = broken
    snap = hub.publish({"components": {"p": COMP}, "metrics": {}})
    assert set(snap.doc["components"]) == {"p"}
