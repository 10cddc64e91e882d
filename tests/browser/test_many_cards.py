"""Past EAGER_CARDS components the page fills only the cards on screen."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.browser

INTERVAL = 0.3
#: More than core/web/static/cards.js EAGER_CARDS (100).
COUNT = 120
SLEEP = shutil.which("sleep") or "/bin/sleep"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, helpers: Any) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("many-cards")
    components = "".join(
        f'[components.c{i:03d}]\nplugin = "process"\n'
        f'command = {json.dumps([SLEEP, "3600"])}\nstop_timeout = 2\n' for i in range(COUNT))
    core = helpers.CoreServer(tmp, components, interval=INTERVAL)
    core.start(timeout=40)
    yield core
    core.stop()


def uptime(page: Any, cid: str) -> str:
    return page.locator(f"#component-{cid} .f-uptime").inner_text()


# Which cards are on screen: the browser's own content-visibility signal, or
# (a browser without it) an IntersectionObserver.
WITHOUT_THE_EVENT = "delete window.ContentVisibilityAutoStateChangeEvent;"


@pytest.mark.parametrize("signal", ["content-visibility", "intersection-observer"])
def test_off_screen_cards_keep_their_state_and_fill_their_figures_when_shown(
        new_page: Any, server: Any, signal: str) -> None:
    page, errors = new_page(viewport={"width": 1400, "height": 900})
    if signal == "intersection-observer":
        page.add_init_script(WITHOUT_THE_EVENT)
    page.goto(f"{server.url}/")
    assert page.evaluate("typeof ContentVisibilityAutoStateChangeEvent") == (
        "function" if signal == "content-visibility" else "undefined")
    # Every card's state is current, on screen or not.
    page.wait_for_function(
        "(n) => document.querySelectorAll('.card[data-state=running]').length === n",
        arg=COUNT, timeout=40_000)
    last = f"c{COUNT - 1:03d}"
    off_screen = page.evaluate(
        "(cid) => document.querySelector(`#component-${cid}`).getBoundingClientRect().top",
        last)
    assert off_screen > 900 + 600, off_screen  # beyond the margin the page fills ahead
    # Its figures wait while it is out of sight...
    before = uptime(page, last)
    page.wait_for_function("(s) => document.querySelector('#component-c000 .f-uptime')"
                           ".textContent !== s", arg=uptime(page, "c000"), timeout=5_000)
    time.sleep(1.5)
    assert uptime(page, last) == before  # no work for what nobody sees
    # ...and are the latest as soon as it scrolls into view.
    page.locator(f"#component-{last}").scroll_into_view_if_needed()
    page.wait_for_function(
        "([cid, s]) => document.querySelector(`#component-${cid} .f-uptime`).textContent !== s",
        arg=[last, before], timeout=2_000)
    # A state change reaches an off-screen card without scrolling to it.
    page.evaluate("window.scrollTo(0, 0)")
    page.evaluate("(cid) => fetch(`/api/components/${cid}/stop`, {method: 'POST'})", last)
    page.wait_for_function(
        "(cid) => document.querySelector(`#component-${cid}`).dataset.state === 'stopped'",
        arg=last, timeout=10_000)
    page.evaluate("(cid) => fetch(`/api/components/${cid}/start`, {method: 'POST'})", last)
    page.wait_for_function(
        "(cid) => document.querySelector(`#component-${cid}`).dataset.state === 'running'",
        arg=last, timeout=10_000)
    errors.check()
