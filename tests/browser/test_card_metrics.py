"""A component's own metrics show on its dashboard card and follow the snapshot."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.browser


def test_the_storage_card_shows_its_probe_metrics(new_page: Any, helpers: Any,
                                                  tmp_path: Any) -> None:
    engine_port = helpers.free_port()
    server = helpers.CoreServer(tmp_path, "[components.storage]\nplugin = \"storage\"\n"
                                f"port = {engine_port}\n", interval=0.3)
    server.start()
    try:
        page, errors = new_page()
        page.goto(f"{server.url}/")
        row = page.locator('#component-storage .card-metrics [data-metric="total_concepts"]')
        row.wait_for(state="visible")
        assert row.locator("dt").inner_text().lower() == "total concepts"
        assert row.locator("dd").inner_text() == "0"
        names = page.eval_on_selector_all(
            "#component-storage .card-metrics [data-metric]",
            "rows => rows.map(r => r.dataset.metric)")
        snap = server.get("/api/status")
        assert names == list(snap["components"]["storage"]["metrics"])
        # Stopped: no metrics in the snapshot, none on the card.
        page.click('#component-storage [data-action="stop"]')
        page.locator("#component-storage .card-metrics").wait_for(state="hidden")
        errors.check()
    finally:
        server.stop()
