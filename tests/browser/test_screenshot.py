"""The shipped config.toml in a real browser; saves test-artifacts/dashboard.png.

docs/dashboard.png is a copy of that screenshot, committed for the README.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

INTERVAL = 0.5


def shipped_config_on_free_ports(helpers: Any, tmp: Any) -> tuple[str, int]:
    """config.toml as shipped, every port moved to a free one, data and logs in tmp."""
    text = (helpers.repo / "config.toml").read_text()
    doc = tomllib.loads(text)
    ports = [doc["server"].get("port", 9000)]
    ports += [c["port"] for c in doc.get("components", {}).values() if "port" in c]
    moved = {old: helpers.free_port() for old in ports}
    for old, new in moved.items():
        text, count = re.subn(rf"(?<![\d.]){old}(?![\d.])", str(new), text)
        assert count, f"port {old} not found in config.toml"
    text, count = re.subn(r"(?m)^interval = [\d.]+", f"interval = {INTERVAL}", text)
    assert count == 1
    for key in ("data_dir", "log_dir"):
        text, count = re.subn(rf'(?m)^{key} = "[^"]*"',
                              f"{key} = {helpers.toml_str(str(tmp / key))}", text)
        assert count == 1, f"[server] {key} not found in config.toml"
    return text, moved[ports[0]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, helpers: Any) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("shipped")
    text, port = shipped_config_on_free_ports(helpers, tmp)
    core = helpers.CoreServer(tmp, "", port=port, interval=INTERVAL, config_text=text)
    core.start()
    yield core
    core.stop()


def test_dashboard_screenshot_with_the_shipped_config(new_page: Any, server: Any,
                                                      helpers: Any) -> None:
    page, errors = new_page(viewport={"width": 1440, "height": 900}, device_scale_factor=1)
    page.goto(f"{server.url}/")
    ids = list(server.get("/api/status")["components"])
    for cid in ids:
        page.wait_for_function(
            "(cid) => document.querySelector(`#component-${cid}`)?.dataset.state === 'running'",
            arg=cid, timeout=30_000)
    # The reference stack is live: queries flow and concepts grow.
    page.wait_for_function(
        "() => Number(document.querySelector('[data-metric=queries_per_second] .tile-value')"
        ".textContent) > 0", timeout=30_000)
    page.wait_for_function(
        "() => Number(document.querySelector('#chart-qps path.chart-line').dataset.points) >= 16",
        timeout=30_000)
    page.locator(f"#component-{ids[-1]} .logs summary").click()
    page.locator(f"#component-{ids[-1]} .log-line").first.wait_for()
    page.wait_for_timeout(INTERVAL * 1000)
    path = helpers.save_artifact(page, "dashboard.png")
    assert path.stat().st_size > 10_000
    errors.check()
