"""Connection status and reconnection, against a real server stopped and started again."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.browser

INTERVAL = 0.3
SLEEPER = "import time; print('up', flush=True); time.sleep(3600)"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, helpers: Any) -> Iterator[Any]:
    core = helpers.CoreServer(tmp_path_factory.mktemp("reconnect"),
                              helpers.process_component("sleeper", "Sleeper", SLEEPER),
                              interval=INTERVAL)
    core.start()
    yield core
    core.stop()


def conn_state(page: Any) -> str:
    return page.locator("#conn").get_attribute("data-state")


def wait_conn(page: Any, state: str, timeout: float = 10_000) -> None:
    page.wait_for_function("(s) => document.querySelector('#conn').dataset.state === s",
                           arg=state, timeout=timeout)


def test_server_restart_shows_reconnecting_then_reconnects_by_itself(
        new_page: Any, server: Any, helpers: Any) -> None:
    page, errors = new_page()
    page.goto(f"{server.url}/?reconnect_base_ms=300")
    wait_conn(page, "connected")
    helpers.watch_attribute(page, "#conn", "data-state", "connStates")
    helpers.watch_attribute(page, "#conn", "data-close-code", "closeCodes")
    page.evaluate("""() => {
        const text = document.querySelector('#conn-text');
        window.connTexts = [];
        new MutationObserver(() => window.connTexts.push(text.textContent)).observe(
            text, {childList: true, characterData: true, subtree: true});
    }""")

    assert server.stop() == 0
    wait_conn(page, "reconnecting")
    # The attempt number and a countdown, then stale data is marked.
    page.wait_for_function(
        "() => /attempt [2-9] of 10/.test(document.querySelector('#conn-text').textContent)")
    page.locator("#stale").wait_for(state="visible", timeout=(2 * INTERVAL + 2) * 1000)
    assert page.locator("body.is-stale").count() == 1
    texts = page.evaluate("window.connTexts")
    assert any(re.fullmatch(r"Reconnecting \(attempt 1 of 10\) in \ds", t) for t in texts), texts
    assert page.locator("#banner").is_hidden()
    # SIGTERM: the server says it is going away (1001); refused attempts then look like 1006.
    codes = [code for code in page.evaluate("window.closeCodes") if code]
    assert codes[:2] == ["1001", "1006"], codes

    server.start()
    wait_conn(page, "connected", timeout=15_000)
    assert page.locator("#conn-text").inner_text() == "Connected"
    page.locator("#stale").wait_for(state="hidden", timeout=(2 * INTERVAL + 2) * 1000)
    seen = page.evaluate("window.connStates")
    assert seen[0] == "connected" and seen[-1] == "connected"
    assert set(seen[1:-1]) == {"reconnecting"}, seen
    # Fresh snapshots flow again.
    before = page.locator("#last-update").inner_text()
    page.wait_for_function("(t) => document.querySelector('#last-update').textContent !== t",
                           arg=before, timeout=(3 * INTERVAL + 2) * 1000)
    errors.check(allow_network=True)


def test_gives_up_after_ten_attempts_with_a_message_then_reconnect_now(
        new_page: Any, server: Any) -> None:
    # Phone width: the long status texts and the banner must still fit.
    page, errors = new_page(viewport={"width": 375, "height": 812})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    # 1 ms base: the ten attempts take about a second instead of 51 minutes.
    page.goto(f"{server.url}/?reconnect_base_ms=1")
    wait_conn(page, "connected")
    assert server.stop() == 0
    wait_conn(page, "disconnected", timeout=15_000)
    banner = page.locator("#banner")
    assert banner.is_visible()
    assert "10 reconnection attempts failed" in banner.inner_text()
    assert page.locator("#conn-text").inner_text() == "Disconnected"
    assert not dialogs, "no blocking alert()"
    assert page.evaluate("document.documentElement.scrollWidth") <= 375

    # Gave up for good: no further attempt on its own.
    server.start()
    page.wait_for_timeout(1000)
    assert conn_state(page) == "disconnected"
    page.locator("#reconnect-now").click()
    wait_conn(page, "connected")
    assert banner.is_hidden()
    errors.check(allow_network=True)
