"""The scale control on an instance's card: it sets the count, the cards follow."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.browser


def _cards(page: Any) -> list[str]:
    return page.eval_on_selector_all("#components .card:not([hidden])",
                                     "cards => cards.map(c => c.dataset.id)")


def test_the_card_scale_control_scales_the_component(new_page: Any, helpers: Any,
                                                     tmp_path: Any) -> None:
    server = helpers.CoreServer(tmp_path, helpers.process_component(
        "web", "Web", "import time; time.sleep(600)", instances=2) + helpers.process_component(
        "solo", "Solo", "import time; time.sleep(600)"), interval=0.3)
    server.start()
    try:
        page, errors = new_page()
        page.goto(f"{server.url}/")
        field = page.locator('[data-id="web.1"] .scale-input')
        field.wait_for(state="visible")
        assert field.input_value() == "2"
        # A plain component's card has no scale control.
        assert page.locator('[data-id="solo"] .card-scale').count() == 0
        assert sorted(_cards(page)) == ["solo", "web.0", "web.1"]

        field.fill("4")
        page.click('[data-id="web.1"] [data-action="scale"]')
        page.wait_for_function("""() => ['web.2', 'web.3'].every(id => {
            const card = document.querySelector(`[data-id="${id}"]`);
            return card && card.dataset.state === 'running'; })""")
        feedback = page.locator('[data-id="web.1"] .card-feedback')
        assert "now has 4 instances" in feedback.inner_text()
        comps = server.get("/api/status")["components"]
        pids = [comps[f"web.{k}"]["pid"] for k in range(4)]
        assert None not in pids and len(set(pids)) == 4
        page.wait_for_function(
            "() => document.querySelector('[data-id=\"web.0\"] .scale-input').value === '4'")

        # Down to one from another instance's card; the surplus cards go.
        page.locator('[data-id="web.0"] .scale-input').fill("1")
        page.click('[data-id="web.0"] [data-action="scale"]')
        page.wait_for_function("() => !document.querySelector('[data-id=\"web.1\"]')")
        assert sorted(_cards(page)) == ["solo", "web.0"]
        assert server.get("/api/components/web")["instances"] == 1
        errors.check()
    finally:
        server.stop()
