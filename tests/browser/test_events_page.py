"""The page's event timeline, crash notices, chart markers, and an expiring token."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.browser

SECRET = "a-jwt-secret-for-the-browser-tests-0123"
# Up, then a crash a second later, every time: a crash loop the page must tell of.
FLAKY = "import time; print('up', flush=True); time.sleep(1.0); raise SystemExit(3)"


def test_a_crash_shows_in_the_timeline_as_a_notice_and_on_the_charts(
        new_page: Any, helpers: Any, tmp_path: Any) -> None:
    core = helpers.CoreServer(tmp_path, helpers.process_component(
        "flaky", "Flaky", FLAKY, backoff_initial=0.2, backoff_max=0.5, stable_after=0.5,
        max_failures=100), interval=0.3)
    core.start()
    try:
        page, errors = new_page()
        page.goto(f"{core.url}/")
        crashed = page.locator('#events .event[data-kind="crashed"]').first
        crashed.wait_for(timeout=15_000)
        assert "exited with status 3" in crashed.inner_text()
        notice = page.locator('#notices .notice[data-kind="crashed"]').first
        notice.wait_for(timeout=10_000)
        assert "flaky" in notice.inner_text()
        # The notice is not in the way: the page still takes clicks.
        page.locator("#events-component").select_option("flaky")
        assert page.locator("#events .event").count() >= 1
        page.locator('#charts .chart-marker[data-kind="crashed"]').first.wait_for(
            state="attached", timeout=15_000)
        errors.check()
    finally:
        core.stop()


def test_an_expired_token_asks_for_a_new_one_instead_of_reconnecting(
        new_page: Any, helpers: Any, tmp_path: Any) -> None:
    from core.identity import AuthConfig, mint

    core = helpers.CoreServer(tmp_path, helpers.process_component(
        "a", "A", "import time; time.sleep(3600)") + f'\n[auth]\njwt_secret = "{SECRET}"\n',
        interval=0.3)
    core.start()
    try:
        token = mint(AuthConfig(jwt_secret=SECRET), role="viewer", ttl=4, sub="browser")
        page, errors = new_page()
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        page.goto(f"{core.url}/")
        page.locator("#auth-form").wait_for()
        page.fill("#auth-token", token)
        page.locator("#auth-form button[type=submit]").click()
        page.locator("#main").wait_for()
        page.locator("#auth-error").filter(has_text="expired").wait_for(timeout=15_000)
        assert page.locator("#auth").is_visible()
        page.wait_for_timeout(4000)  # a reconnect would come 3 s after a close
        assert len(sockets) == 1, sockets
        errors.check(allow_network=True)
    finally:
        core.stop()
