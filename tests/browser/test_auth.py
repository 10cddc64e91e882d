"""A server with a token: the page asks for it once, then REST and /ws use it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.browser

TOKEN = "s3cret-token"
SLEEPER = "import time; print('up', flush=True); time.sleep(3600)"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, helpers: Any) -> Iterator[Any]:
    # control_rate 0.2/s: one control request, then 429 for five seconds.
    core = helpers.CoreServer(tmp_path_factory.mktemp("auth"),
                              helpers.process_component("sleeper", "Sleeper", SLEEPER),
                              interval=0.3,
                              server_extra=f'token = "{TOKEN}"\ncontrol_rate = 0.2')
    core.start()
    yield core
    core.stop()


def test_asks_for_the_token_once_then_works(new_page: Any, server: Any) -> None:
    page, errors = new_page()
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.goto(f"{server.url}/")
    form = page.locator("#auth-form")
    form.wait_for()
    assert page.locator("#main").is_hidden()
    assert page.evaluate("document.activeElement.id") == "auth-token"

    page.fill("#auth-token", "wrong-token")
    page.locator("#auth-form button[type=submit]").click()
    page.locator("#auth-error").wait_for()
    assert "not accepted" in page.locator("#auth-error").inner_text()
    assert form.is_visible()

    page.fill("#auth-token", TOKEN)
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.querySelector('#conn').dataset.state === 'connected'")
    assert form.is_hidden() and page.locator("#main").is_visible()
    page.wait_for_function(
        "() => document.querySelector('#component-sleeper')?.dataset.state === 'running'")
    assert sockets and all(url.endswith(f"?token={TOKEN}") for url in sockets)
    assert page.evaluate("sessionStorage.getItem('control-center.token')") == TOKEN

    # Kept for the session: a reload does not ask again.
    page.reload()
    page.wait_for_function("() => document.querySelector('#conn').dataset.state === 'connected'")
    assert form.is_hidden()

    # REST carries the token too, and the server's error text reaches the card.
    card = page.locator("#component-sleeper")
    card.locator("[data-action=stop]").click()
    page.wait_for_function(
        "() => document.querySelector('#component-sleeper').dataset.state === 'stopped'")
    card.locator("[data-action=start]").click()
    feedback = card.locator(".card-feedback")
    page.wait_for_function(
        "() => document.querySelector('#component-sleeper .card-feedback').dataset.kind"
        " === 'error'")
    text = feedback.inner_text()
    assert text.startswith("Start failed (429): "), text
    assert len(text) > len("Start failed (429): ")
    # Wrong token (401) and rate limit (429) are logged by Chromium as failed requests only.
    errors.check(allow_network=True)


def test_a_revoked_token_asks_again(new_page: Any, server: Any) -> None:
    page, errors = new_page()
    page.goto(f"{server.url}/")
    page.locator("#auth-form").wait_for()  # the first boot is over
    page.evaluate("(t) => sessionStorage.setItem('control-center.token', t)", "stale-token")
    page.reload()
    page.locator("#auth-form").wait_for()
    assert "not accepted" in page.locator("#auth-error").inner_text()
    page.fill("#auth-token", TOKEN)
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.querySelector('#conn').dataset.state === 'connected'")
    errors.check(allow_network=True)
