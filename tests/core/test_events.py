"""The event log and the notifiers, against real SQLite, HTTP, SMTP and commands."""

from __future__ import annotations

import http.server
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from core.events import EventLog, EventsConfig, EventStore
from core.notify import Notifier, NotifyConfig

pytestmark = pytest.mark.anyio


def test_the_store_keeps_events_and_their_retention(tmp_path):
    store = EventStore(tmp_path / "events.sqlite3", EventsConfig(keep_days=1, max_rows=50))
    log = EventLog(store)
    for i in range(80):
        log.emit("state", f"c{i % 3}", old="running", new="error", reason=f"exit {i}")
    events = list(log.recent)
    store.write(events)
    kept = store.query(limit=1000)
    assert [e.id for e in kept] == list(range(31, 81))  # max_rows: the newest 50
    only = store.query(component="c1", kind="state", limit=5)
    assert len(only) == 5 and all(e.component == "c1" for e in only)
    assert only[-1].as_dict()["reason"] == "exit 79"
    # A new log on the same store goes on numbering after the last stored id.
    assert EventLog(store).emit("reload").id == 81


@pytest.mark.parametrize("stored", [True, False], ids=["store", "memory"])
async def test_a_component_query_matches_its_instances(tmp_path, stored):
    store = EventStore(tmp_path / "events.sqlite3", EventsConfig(keep_days=1, max_rows=50)) \
        if stored else None
    log = EventLog(store)
    for cid in ("w.0", "w.1", "w", "web.0", "w2", "x.0"):
        log.emit("state", cid, old="running", new="error", reason="exit 1")
    if store is not None:
        store.write(list(log.recent))
    ids = [e.component for e in await log.query(component="w")]
    assert ids == ["w.0", "w.1", "w"]  # neither web.0 nor w2
    assert [e.component for e in await log.query(component="w.1")] == ["w.1"]


async def test_a_query_answers_with_every_event_emitted_before_it(tmp_path):
    # The store is written from a worker thread, behind the emitting code: a
    # query made at once must still see what was emitted (and pushed) before.
    store = EventStore(tmp_path / "events.sqlite3", EventsConfig(keep_days=1, max_rows=10_000))
    log = EventLog(store)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(300):
            log.emit("control", "a", actor="alice", action="stop", n=i)
        found = await log.query(component="a", kind="control", limit=1000)
        nursery.cancel_scope.cancel()
    assert [e.data["n"] for e in found] == list(range(300))


async def test_a_consumer_that_falls_behind_loses_events_never_the_emitter():
    log = EventLog()
    stuck = log.add_consumer("a consumer that never reads", None)
    started = trio.current_time()
    for _ in range(1010):
        log.emit("probe_error", "a", error="timeout")
    assert trio.current_time() - started < 1
    assert stuck.dropped == 10
    assert log.counts["probe_error"] == 1010


class _Receiver(http.server.BaseHTTPRequestHandler):
    got: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.got.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    got: list[dict[str, Any]] = []
    handler = type("Receiver", (_Receiver,), {"got": got})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    finally:
        server.shutdown()
        server.server_close()


async def _run(notifier: Notifier, log: EventLog, emit: Any, until: Any,
               timeout: float = 10) -> None:
    consumer = log.add_consumer("test", None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(notifier.run, consumer.receive)
        emit()
        with trio.fail_after(timeout):
            while not until():
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()


async def test_a_crash_loop_is_one_webhook_then_one_summary(receiver):
    url, got = receiver
    notifier = Notifier(NotifyConfig(name="ops", kind="webhook", events=("crashed",),
                                     url=url, min_interval=1.0))
    log = EventLog()

    def crash_loop() -> None:
        for n in range(15):
            log.emit("crashed", "api", reason=f"exited with status 1 (run {n})")
        log.emit("crashed", "storage", reason="killed by SIGKILL")
        log.emit("recovered", "api")  # not asked for

    await _run(notifier, log, crash_loop, lambda: len(got) >= 3, timeout=10)
    await trio.sleep(1.5)  # nothing more comes
    texts = sorted(g["text"] for g in got)
    assert len(got) == 3, texts
    assert "api crashed: exited with status 1 (run 0)" in texts
    assert "storage crashed: killed by SIGKILL" in texts
    assert any(t.startswith("api: and 14 more crashed in") for t in texts), texts
    assert all(g["event"]["type"] == "event" for g in got)


async def test_email_reaches_a_real_smtp_server():
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    received: list[Any] = []

    class Keep(Message):
        def handle_message(self, message: Any) -> None:
            received.append(message)

    import socket

    with socket.socket() as probe:  # a free port: aiosmtpd checks it can connect to it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(Keep(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        notifier = Notifier(NotifyConfig(name="mail", kind="email", events=("gave_up",),
                                         host="127.0.0.1", port=port, to=("ops@example.com",)))
        log = EventLog()
        await _run(notifier, log, lambda: log.emit("gave_up", "api", reason="8 quick failures"),
                   lambda: received)
    finally:
        controller.stop()
    [message] = received
    assert message["To"] == "ops@example.com"
    assert "api gave up restarting: 8 quick failures" in message["Subject"]


async def test_a_command_gets_the_event_on_stdin_and_in_its_environment(tmp_path):
    out = tmp_path / "got.json"
    script = ("import json, os, sys; json.dump({'stdin': json.load(sys.stdin), "
              "'kind': os.environ['CC_EVENT_KIND'], 'component': os.environ['CC_EVENT_COMPONENT']},"
              f" open({str(out)!r}, 'w'))")
    notifier = Notifier(NotifyConfig(name="run", kind="command", events=("unhealthy",),
                                     command=(sys.executable, "-c", script)))
    log = EventLog()
    await _run(notifier, log, lambda: log.emit("unhealthy", "db", reason="no answer"),
               out.exists)
    await trio.sleep(0.2)
    got = json.loads(out.read_text())
    assert got["kind"] == "unhealthy" and got["component"] == "db"
    assert got["stdin"]["event"]["reason"] == "no answer"


async def test_a_hanging_notifier_is_cut_and_counted_and_delays_nothing(tmp_path):
    notifier = Notifier(NotifyConfig(name="slow", kind="command", events=("crashed",),
                                     command=(sys.executable, "-c", "import time; time.sleep(60)"),
                                     timeout=0.3, retries=1, min_interval=0))
    log = EventLog()
    started = time.monotonic()
    await _run(notifier, log, lambda: log.emit("crashed", "a", reason="x"),
               lambda: notifier.failed == 1, timeout=10)
    assert time.monotonic() - started < 5  # 2 attempts of 0.3 s and a 1 s backoff
    assert notifier.sent == 0


def test_notify_and_events_tables_are_checked(tmp_path: Path):
    from core.config import ConfigError, load

    path = tmp_path / "config.toml"
    for text, where in (
            ('[notify.x]\nkind = "pager"\nevents = ["crashed"]', "notify.x.kind"),
            ('[notify.x]\nkind = "webhook"\nevents = ["crashd"]\nurl = "http://h/"',
             "notify.x.events[0]"),
            ('[notify.x]\nkind = "webhook"\nevents = ["crashed"]', "notify.x.url"),
            ('[notify.x]\nkind = "email"\nevents = ["crashed"]\nhost = "h"\nurl = "x"',
             "notify.x.url"),
            ('[events]\nkeep_days = -1', "events.keep_days")):
        path.write_text(text + "\n")
        with pytest.raises(ConfigError) as refused:
            load(path)
        assert where in str(refused.value), (text, refused.value)
    path.write_text('[notify.x]\nkind = "webhook"\nevents = ["crashed", "gave_up"]\n'
                    'url = "http://127.0.0.1:1/"\nmin_interval = 5\n')
    [config] = load(path).notify
    assert config.events == ("crashed", "gave_up") and config.min_interval == 5


async def test_a_plugins_on_event_hears_every_event_in_order_off_the_loop(tmp_path):
    import threading as th

    from core import hookimpl
    from core.config import load
    from core.events import build, run_all
    from core.plugins import PluginManager

    heard: list[tuple[int, str, bool]] = []

    class Listener:
        @hookimpl
        def on_event(self, event: dict) -> None:
            heard.append((event["id"], event["kind"], th.current_thread() is th.main_thread()))

    path = tmp_path / "config.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n')
    config = load(path)
    events, notifiers = build(config, PluginManager(load_entry_points=False,
                                                    extra={"listener": Listener()}))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_all, events, notifiers)
        for kind in ("state", "crashed", "restart_scheduled"):
            events.emit(kind, "a")
        with trio.fail_after(10):
            while len(heard) < 3:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert [(i, k) for i, k, _ in heard] == [(1, "state"), (2, "crashed"),
                                             (3, "restart_scheduled")]
    assert not any(on_loop for _, _, on_loop in heard)
    # And the store has them, for GET /api/events.
    assert [e.kind for e in await events.query(limit=10)] == ["state", "crashed",
                                                              "restart_scheduled"]
