"""Close codes from the real server: 1013 reconnects, 1008 does not."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.browser

SLEEPER = "import time; time.sleep(3600)"

# Keeps every WebSocket the page opens, so a test can speak through it.
TRACK_SOCKETS = """
(() => {
    const Native = window.WebSocket;
    window.openedSockets = [];
    window.WebSocket = class extends Native {
        constructor(...args) {
            super(...args);
            window.openedSockets.push(this);
        }
    };
})();
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, helpers: Any) -> Iterator[Any]:
    core = helpers.CoreServer(tmp_path_factory.mktemp("codes"),
                              helpers.process_component("sleeper", "Sleeper", SLEEPER),
                              interval=0.3, server_extra="max_clients = 1\nmessage_rate = 5")
    core.start()
    yield core
    core.stop()


def wait_conn(page: Any, state: str, timeout: float = 10_000) -> None:
    page.wait_for_function("(s) => document.querySelector('#conn').dataset.state === s",
                           arg=state, timeout=timeout)


def test_full_server_1013_reconnects_once_a_place_frees(new_page: Any, server: Any,
                                                        helpers: Any) -> None:
    first, first_errors = new_page()
    first.goto(f"{server.url}/")
    wait_conn(first, "connected")

    second, second_errors = new_page()
    second.goto(f"{server.url}/?reconnect_base_ms=100")
    second.locator("#component-sleeper").wait_for()  # REST still works
    helpers.watch_attribute(second, "#conn", "data-close-code", "closeCodes")
    wait_conn(second, "reconnecting")
    assert "1013" in second.evaluate("window.closeCodes")

    first.close()
    wait_conn(second, "connected", timeout=15_000)
    assert second.locator("#banner").is_hidden()
    first_errors.check()
    second_errors.check(allow_network=True)


def test_policy_close_1008_does_not_reconnect(new_page: Any, server: Any) -> None:
    page, errors = new_page()
    page.add_init_script(TRACK_SOCKETS)
    page.goto(f"{server.url}/?reconnect_base_ms=50")
    wait_conn(page, "connected")
    # A message flood well past message_rate: the server closes with 1008.
    page.evaluate("""() => {
        const ws = window.openedSockets[window.openedSockets.length - 1];
        for (let i = 0; i < 100; i++) ws.send('{"type": "subscribe"}');
    }""")
    wait_conn(page, "disconnected")
    assert page.locator("#conn").get_attribute("data-close-code") == "1008"
    assert "policy" in page.locator("#banner").inner_text()
    opened = page.evaluate("window.openedSockets.length")
    page.wait_for_timeout(1000)  # 20 base delays: no new attempt
    assert page.evaluate("window.openedSockets.length") == opened
    assert page.locator("#conn").get_attribute("data-state") == "disconnected"
    errors.check()
