"""The page against a hostile browser context: DNS rebinding and framing, in Chromium."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, helpers: Any) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("page-security")
    srv = helpers.CoreServer(tmp, helpers.process_component(
        "a", "Sleeper", "import time; time.sleep(600)"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def rebinding_browser(browser: Any) -> Iterator[Any]:
    """Chromium in which evil.example resolves to 127.0.0.1, as a rebinding attacker makes it."""
    from .conftest import CHROMIUM, CHROMIUM_ARGS

    # The same Playwright instance: a second one cannot run beside it.
    instance = browser.browser_type.launch(executable_path=CHROMIUM, args=[
        *CHROMIUM_ARGS, "--host-resolver-rules=MAP evil.example 127.0.0.1"])
    try:
        yield instance
    finally:
        instance.close()


def test_a_rebound_name_gets_nothing(rebinding_browser: Any, server: Any) -> None:
    context = rebinding_browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(10_000)
        response = page.goto(f"http://evil.example:{server.port}/")
        assert response is not None and response.status == 403
        assert "allowed_hosts" in response.json()["error"]
        # From that origin, as the attacker's script would: status, control, stream.
        seen = page.evaluate("""async () => {
            const status = (await fetch("/api/status")).status;
            const stop = (await fetch("/api/components/a/stop", {method: "POST"})).status;
            const stream = await new Promise((done) => {
                const ws = new WebSocket(`ws://${location.host}/ws`);
                ws.onmessage = () => { done("snapshot"); ws.close(); };
                ws.onerror = () => done("refused");
                setTimeout(() => done("timeout"), 5000);
            });
            return {status, stop, stream};
        }""")
    finally:
        context.close()
    assert seen == {"status": 403, "stop": 403, "stream": "refused"}, seen
    assert server.get("/api/components/a")["state"] == "running"


def test_the_page_cannot_be_framed(new_page: Any, server: Any, helpers: Any) -> None:
    # Another local page (another port: another origin) frames the dashboard.
    framing = (f'<html><body><iframe id="f" src="{server.url}/" width="800" height="600">'
               "</iframe></body></html>").encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(framing)))
            self.end_headers()
            self.wfile.write(framing)

        def log_message(self, *args: object) -> None:
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    try:
        page, _errors = new_page()
        with page.expect_response(lambda r: r.url.rstrip("/") == server.url) as framed:
            page.goto(f"http://127.0.0.1:{other.server_address[1]}/")
        headers = framed.value.headers
        assert headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        page.wait_for_timeout(500)
        frame = page.frame_locator("#f")
        # The browser refused to render it: no dashboard inside the frame.
        assert frame.locator("#components, main, header").count() == 0
    finally:
        other.shutdown()
        other.server_close()
