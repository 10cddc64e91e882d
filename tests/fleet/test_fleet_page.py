"""The parent's dashboard in a real Chromium: hosts with their state, a remote's card stopped."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from .conftest import Fleet, component_table, remote_table

CHROMIUM = "/usr/bin/chromium"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed"),
]


def test_the_page_shows_each_host_and_stops_a_remote_component(fleet: Fleet) -> None:
    from playwright.sync_api import expect, sync_playwright

    child = fleet.start("child", component_table("a"))
    parent = fleet.start("parent", component_table("p") + remote_table("child", child.url))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM,
                                     args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(parent.url + "/")
            host = page.locator('#hosts [data-host="child"]')
            expect(host).to_have_attribute("data-state", "connected", timeout=20_000)
            card = page.locator('.card[data-id="child/a"]')
            expect(card).to_have_attribute("data-state", "running", timeout=20_000)
            expect(card.locator(".card-id")).to_contain_text("child/a")
            # Grouped by host: the remote's components under its name.
            page.select_option("#group-by", "host")
            titles = page.locator("#components .group-title")
            expect(titles.filter(has_text="child")).to_have_count(1)
            expect(titles.filter(has_text="this machine")).to_have_count(1)
            page.select_option("#group-by", "")
            card.locator('[data-action="stop"]').click()
            expect(card).to_have_attribute("data-state", "stopped", timeout=20_000)

            os.kill(child.proc.pid, signal.SIGSTOP)
            expect(host).to_have_attribute("data-state", "unreachable", timeout=20_000)
            expect(card).to_have_attribute("data-state", "error", timeout=20_000)
            expect(card.locator(".card-error")).to_contain_text("host child unreachable")
            os.kill(child.proc.pid, signal.SIGCONT)
            expect(host).to_have_attribute("data-state", "connected", timeout=20_000)
            assert errors == []
        finally:
            browser.close()
