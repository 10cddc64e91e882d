"""Events from a real supervisor: a crash loop tells a webhook once, then sums up."""

from __future__ import annotations

import http.client
import http.server
import json
import sys
import threading
import time
from typing import Any

from .conftest import component_table, serving


def test_a_crash_loop_produces_one_webhook_then_one_summary(tmp_path):
    got: list[dict[str, Any]] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    crashing = component_table("flaky", command=[sys.executable, "-c", "raise SystemExit(3)"],
                               backoff_initial=0.05, backoff_max=0.1, max_failures=6)
    notify = (f'\n[notify.ops]\nkind = "webhook"\nurl = "{url}"\n'
              'events = ["crashed", "gave_up"]\nmin_interval = 3\n')
    try:
        with serving(tmp_path, crashing + notify, interval=0.25) as srv:
            deadline = time.monotonic() + 20
            while not any(g["event"]["kind"] == "gave_up" for g in got) or not any(
                    "more crashed" in g["text"] for g in got):
                assert time.monotonic() < deadline, got
                time.sleep(0.1)
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
            conn.request("GET", "/api/events?component=flaky&limit=1000")
            events = json.loads(conn.getresponse().read())["events"]
            conn.close()
    finally:
        receiver.shutdown()
        receiver.server_close()
    crashed = [g for g in got if g["event"]["kind"] == "crashed"]
    assert len(crashed) == 2, [g["text"] for g in got]  # the first, then one summary
    assert crashed[0]["text"] == "flaky crashed: exited with status 3"
    assert crashed[1]["text"].startswith("flaky: and 5 more crashed in"), crashed[1]["text"]
    kinds = [e["kind"] for e in events]
    assert kinds.count("crashed") == 6 and kinds.count("gave_up") == 1
    assert kinds.count("restart_scheduled") == 5
    assert [e["new"] for e in events if e["kind"] == "state"][-1] == "error"
