"""The dashboard in a real browser against a real `python -m core`."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.browser

INTERVAL = 0.3

# Takes a while to stop (so "stopping" is visible) and logs steadily.
ALPHA = """
import signal, sys, time
def term(*args):
    print("alpha: SIGTERM, finishing work", flush=True)
    time.sleep(0.9)
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
i = 0
while True:
    print(f"alpha tick {i}", flush=True)
    i += 1
    time.sleep(0.1)
"""
BETA = """
import sys, time
print("beta: ready", flush=True)
print("beta: a warning on stderr", file=sys.stderr, flush=True)
time.sleep(3600)
"""
BROKEN = """
import sys
print("broken: missing setting", file=sys.stderr, flush=True)
sys.exit(3)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, helpers: Any) -> Iterator[Any]:
    components = "\n".join([
        helpers.process_component("alpha", "Alpha worker", ALPHA, stop_timeout=5),
        helpers.process_component("beta", "Beta worker", BETA),
        helpers.process_component("broken", "Broken job", BROKEN, restart="never"),
    ])
    core = helpers.CoreServer(tmp_path_factory.mktemp("dashboard"), components,
                              interval=INTERVAL)
    core.start()
    yield core
    core.stop()


def open_dashboard(new_page: Any, server: Any, **options: Any) -> tuple[Any, Any]:
    page, errors = new_page(**options)
    page.goto(f"{server.url}/")
    return page, errors


def card(page: Any, cid: str) -> Any:
    return page.locator(f"#component-{cid}")


def wait_state(page: Any, cid: str, state: str, timeout: float = 10_000) -> None:
    page.wait_for_function(
        "([cid, state]) => document.querySelector(`#component-${cid}`)?.dataset.state === state",
        arg=[cid, state], timeout=timeout)


def test_every_component_and_live_figures_within_one_interval(new_page: Any,
                                                              server: Any) -> None:
    wait_running = time.monotonic() + 10
    while server.get("/api/components/alpha")["state"] != "running":
        assert time.monotonic() < wait_running, "alpha never reached running"
        time.sleep(0.05)
    page, errors = new_page()
    page.goto(f"{server.url}/", wait_until="load")
    # Filled from REST at load and the WebSocket's first snapshot: well within one interval
    # (plus a margin for a slow CI machine).
    page.wait_for_function(
        "() => /^\\d+$/.test(document.querySelector('#component-alpha .f-pid')?.textContent)",
        timeout=(INTERVAL + 1.5) * 1000)
    assert [page.locator(".card-name").nth(i).inner_text() for i in range(3)] == [
        "Alpha worker", "Beta worker", "Broken job"]

    alpha = card(page, "alpha")
    assert alpha.locator(".state-text").inner_text() == "running"
    assert alpha.get_attribute("data-state") == "running"
    # The state's colour comes from its data-state; running is green.
    colour = alpha.locator(".state-dot").evaluate("n => getComputedStyle(n).backgroundColor")
    assert colour == "rgb(62, 207, 142)"
    assert re.fullmatch(r"\d+s|\d+m \d+s", alpha.locator(".f-uptime").inner_text())
    assert re.fullmatch(r"\d+\.\d %", alpha.locator(".f-cpu").inner_text())
    assert re.fullmatch(r"\d+(\.\d+)? MB", alpha.locator(".f-memory").inner_text())
    assert alpha.locator(".f-restarts").inner_text() == "0"

    broken = card(page, "broken")
    page.wait_for_function(
        "() => ['stopped', 'error'].includes(document.querySelector('#component-broken')"
        ".dataset.state)")
    assert broken.locator(".f-pid").inner_text() == "–"
    assert broken.locator("[data-action=start]").is_enabled()
    assert broken.locator("[data-action=stop]").is_disabled()

    for metric in ("cpu_percent", "memory_percent"):
        text = page.locator(f".tile[data-metric={metric}] .tile-value").inner_text()
        assert re.fullmatch(r"\d+\.\d %", text), (metric, text)

    status = page.locator("#conn")
    assert status.get_attribute("aria-live") == "polite"
    page.wait_for_function("() => document.querySelector('#conn').dataset.state === 'connected'")
    assert page.locator("#conn-text").inner_text() == "Connected"

    # Live: the WebSocket keeps bringing snapshots.
    first = page.locator("#last-update").inner_text()
    page.wait_for_function("(t) => document.querySelector('#last-update').textContent !== t",
                           arg=first, timeout=(3 * INTERVAL + 2) * 1000)
    assert page.locator("#stale").is_hidden()
    errors.check()


def test_stop_shows_stopping_then_stopped_and_start_brings_it_back(
        new_page: Any, server: Any, helpers: Any) -> None:
    page, errors = open_dashboard(new_page, server)
    wait_state(page, "alpha", "running")
    alpha = card(page, "alpha")
    start, stop = alpha.locator("[data-action=start]"), alpha.locator("[data-action=stop]")
    restart = alpha.locator("[data-action=restart]")
    assert start.is_disabled() and stop.is_enabled() and restart.is_enabled()

    helpers.watch_attribute(page, "#component-alpha", "data-state", "alphaStates")
    helpers.watch_attribute(page, "#component-alpha [data-action=stop]", "aria-busy", "stopBusy")
    stop.click()
    wait_state(page, "alpha", "stopped")
    assert page.evaluate("window.alphaStates") == ["running", "stopping", "stopped"]
    # In flight: the button was busy (disabled, spinner), then released.
    assert page.evaluate("window.stopBusy") == ["false", "true", "false"]
    assert "Stop accepted" in alpha.locator(".card-feedback").inner_text()
    page.wait_for_function(
        "() => document.querySelector('#component-alpha [data-action=start]').disabled === false")
    assert stop.is_disabled() and restart.is_disabled()
    assert alpha.locator(".f-pid").inner_text() == "–"

    helpers.watch_attribute(page, "#component-alpha", "data-state", "alphaStates")
    start.click()
    wait_state(page, "alpha", "running")
    seen = page.evaluate("window.alphaStates")
    assert seen[0] == "stopped" and seen[-1] == "running"
    assert set(seen[1:-1]) <= {"starting"}, seen
    page.wait_for_function(
        "() => /^\\d+$/.test(document.querySelector('#component-alpha .f-pid').textContent)")
    assert start.is_disabled() and stop.is_enabled()
    errors.check()


def test_log_panel_shows_the_tail_and_follows_while_open(new_page: Any, server: Any) -> None:
    page, errors = open_dashboard(new_page, server)
    wait_state(page, "alpha", "running")
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "/logs" in r.url else None)

    card(page, "alpha").locator(".logs summary").click()
    lines = card(page, "alpha").locator(".log-line")
    lines.first.wait_for()
    assert "alpha tick" in card(page, "alpha").locator(".log-view").inner_text()
    assert "lines=200" in requests[0]
    last = int(lines.last.get_attribute("data-seq"))
    # Followed live: newer lines arrive by polling with after=last_seq.
    page.wait_for_function(
        "(seq) => Number(document.querySelector('#component-alpha .log-line:last-child')"
        ".dataset.seq) > seq", arg=last, timeout=(3 * INTERVAL + 2) * 1000)
    assert any("after=" in url for url in requests[1:])

    # stderr lines are marked as such.
    card(page, "beta").locator(".logs summary").click()
    card(page, "beta").locator(".log-stderr").first.wait_for()
    assert "a warning on stderr" in card(page, "beta").locator(".log-stderr").first.inner_text()

    # Closed: polling stops.
    card(page, "alpha").locator(".logs summary").click()
    card(page, "beta").locator(".logs summary").click()
    page.wait_for_timeout(INTERVAL * 1000)
    count = len(requests)
    page.wait_for_timeout(3 * INTERVAL * 1000)
    assert len(requests) == count
    errors.check()


def test_charts_filled_from_history_then_live(new_page: Any, server: Any) -> None:
    history = server.get("/api/history")["points"]
    assert len(history) >= 2, "the module's server should have some history by now"
    page, errors = open_dashboard(new_page, server)
    line = page.locator("#chart-system path[data-series=cpu_percent]")
    line.wait_for(state="attached")
    page.wait_for_function(
        "(n) => Number(document.querySelector('#chart-system path[data-series=cpu_percent]')"
        ".dataset.points) >= n", arg=len(history))
    before = int(line.get_attribute("data-points"))
    page.wait_for_function(
        "(n) => Number(document.querySelector('#chart-system path[data-series=cpu_percent]')"
        ".dataset.points) > n", arg=before, timeout=(3 * INTERVAL + 2) * 1000)
    # One line per component in the per-component charts.
    assert page.locator("#chart-component-cpu path.chart-line").count() == 3
    errors.check()


def test_chart_module_draws_one_vertex_per_point(new_page: Any, server: Any) -> None:
    page, errors = open_dashboard(new_page, server)
    result = page.evaluate("""async () => {
        const {LineChart} = await import('/static/chart.js');
        const host = document.createElement('div');
        host.style.width = '500px';
        document.body.append(host);
        const chart = new LineChart(host, {title: 'Test', unit: 'x'});
        chart.setSeries([{key: 'a', label: 'A'}, {key: 'b', label: 'B'}]);
        const points = [];
        for (let i = 0; i < 25; i++) {
            points.push({t: 1000 * i, values: {a: i, b: i === 10 ? null : 50 - i}});
        }
        chart.setPoints(points);
        chart.render();
        const paths = [...host.querySelectorAll('path.chart-line')];
        const out = paths.map((p) => ({
            points: Number(p.dataset.points),
            vertices: (p.getAttribute('d').match(/[ML]/g) || []).length,
            moves: (p.getAttribute('d').match(/M/g) || []).length,
            xs: [...p.getAttribute('d').matchAll(/[ML]([\\d.]+),/g)].map((m) => Number(m[1])),
        }));
        chart.push(25000, {a: 25, b: 25});
        chart.render();
        out.push(Number(host.querySelector('path[data-series=a]').dataset.points));
        out.push(host.querySelector('.chart-legend').textContent);
        host.remove();
        return out;
    }""")
    a, b, after_push, legend = result
    assert a["points"] == a["vertices"] == 25 and a["moves"] == 1
    # A null value breaks the line: 24 vertices in two runs.
    assert b["points"] == b["vertices"] == 24 and b["moves"] == 2
    assert a["xs"] == sorted(a["xs"]) and a["xs"][0] < a["xs"][-1]
    assert after_push == 26
    assert "A 25.0 x" in legend
    errors.check()


def test_phone_width_and_keyboard(new_page: Any, server: Any) -> None:
    page, errors = open_dashboard(new_page, server, viewport={"width": 375, "height": 812})
    wait_state(page, "beta", "running")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    box = card(page, "alpha").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375

    # Tab reaches the card buttons; focus is visible.
    reached = None
    for _ in range(40):
        page.keyboard.press("Tab")
        info = page.evaluate("""() => {
            const el = document.activeElement;
            return {action: el.dataset.action || null,
                    card: el.closest('.card')?.dataset.id || null,
                    outline: getComputedStyle(el).outlineStyle};
        }""")
        if info["action"] == "stop" and info["card"] == "beta":
            reached = info
            break
    assert reached is not None, "Tab never reached beta's Stop button"
    assert reached["outline"] != "none"
    # Enter on a focused button acts like a click.
    page.keyboard.press("Enter")
    wait_state(page, "beta", "stopped")
    card(page, "beta").locator("[data-action=start]").click()
    wait_state(page, "beta", "running")
    errors.check()


def visible_cards(page: Any) -> list[str]:
    return page.evaluate("""() => [...document.querySelectorAll('.card')]
        .filter((c) => !c.hidden && !c.closest('.group').hidden).map((c) => c.dataset.id)""")


def test_filter_by_name_and_state_and_group_by_plugin_or_state(new_page: Any,
                                                               server: Any) -> None:
    page, errors = open_dashboard(new_page, server)
    wait_state(page, "alpha", "running")
    wait_state(page, "broken", "error")
    assert visible_cards(page) == ["alpha", "beta", "broken"]
    assert page.locator("#filter-count").inner_text() == ""

    page.fill("#filter-name", "ALP")  # name or id, any case
    page.wait_for_function("() => document.querySelector('#component-beta').hidden")
    assert visible_cards(page) == ["alpha"]
    assert page.locator("#filter-count").inner_text() == "1 of 3 shown"
    page.fill("#filter-name", "job")  # "Broken job": the display name counts too
    page.wait_for_function("() => !document.querySelector('#component-broken').hidden")
    assert visible_cards(page) == ["broken"]

    page.fill("#filter-name", "")
    page.select_option("#filter-state", "running")
    assert visible_cards(page) == ["alpha", "beta"]
    # Filtered out is not stale: a card shown again carries the latest figures.
    page.select_option("#filter-state", "error")
    assert visible_cards(page) == ["broken"]
    page.select_option("#filter-state", "")

    page.select_option("#group-by", "state")
    titles = page.locator(".group:not([hidden]) .group-title").all_inner_texts()
    assert [t.split() for t in titles] == [["error", "1"], ["running", "2"]]
    page.select_option("#group-by", "plugin")
    titles = page.locator(".group:not([hidden]) .group-title").all_inner_texts()
    assert [t.split() for t in titles] == [["process", "3"]]
    assert visible_cards(page) == ["alpha", "beta", "broken"]

    # The view is in the address: a reload (or a shared link) keeps it.
    page.select_option("#filter-state", "running")
    assert "state=running" in page.url and "group=plugin" in page.url
    page.reload()
    wait_state(page, "alpha", "running")
    assert page.locator("#filter-state").input_value() == "running"
    assert visible_cards(page) == ["alpha", "beta"]
    errors.check()


def test_a_snapshot_older_than_the_answer_to_stop_never_shows(new_page: Any, server: Any,
                                                              helpers: Any) -> None:
    # The answer to Stop and the snapshots come on two connections: a snapshot
    # built before the answer can arrive after it. Held back here on purpose
    # (the WebSocket is routed through the test, to the real server), the
    # older snapshots must not put "running" back over "stopped".
    page, errors = new_page()
    held: list[Any] = []
    holding = {"on": False}
    sockets: list[Any] = []

    def route(ws: Any) -> None:
        sockets.append(ws)
        upstream = ws.connect_to_server()

        def from_server(message: Any) -> None:
            if holding["on"]:
                held.append(message)
            else:
                ws.send(message)

        upstream.on_message(from_server)
        ws.on_message(lambda message: upstream.send(message))

    page.route_web_socket(re.compile(r"/ws"), route)
    page.goto(f"{server.url}/")
    wait_state(page, "beta", "running")
    beta = card(page, "beta")
    helpers.watch_attribute(page, "#component-beta", "data-state", "betaStates")
    holding["on"] = True
    deadline = time.monotonic() + 10
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert held, "no snapshot came to hold back"
    beta.locator("[data-action=stop]").click()
    page.wait_for_function(
        "() => /Stop accepted/.test(document.querySelector('#component-beta .card-feedback')"
        ".textContent)")
    assert beta.get_attribute("data-state") == "stopping"  # the answer's state
    # Now the snapshots built before the answer, then those after it, in order.
    holding["on"] = False
    for message in held:
        sockets[-1].send(message)
    page.wait_for_timeout(INTERVAL * 3 * 1000)
    wait_state(page, "beta", "stopped")
    assert page.evaluate("window.betaStates") == ["running", "stopping", "stopped"]
    beta.locator("[data-action=start]").click()
    wait_state(page, "beta", "running")
    errors.check()
