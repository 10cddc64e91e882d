// The dashboard: wires REST, the live WebSocket, the cards, tiles and charts.
//
// Query parameters (for tests and troubleshooting):
//   reconnect_base_ms=N   first reconnection delay (default 3000)

import {api, ApiError, clearToken, getToken, onUnauthorized, setToken, wsUrl} from "./api.js";
import {Connection} from "./connection.js";
import {createCharts} from "./charts.js";
import {EventTimeline} from "./events.js";
import {ComponentCards} from "./cards.js";
import {renderHosts} from "./hosts.js";
import {formatClock, formatCount, formatCountdown, formatMegabytes, formatNumber} from
  "./format.js";

const params = new URLSearchParams(location.search);
const baseDelay = Math.max(1, Number.parseInt(params.get("reconnect_base_ms"), 10) || 3000);

const $ = (id) => document.getElementById(id);

const app = {
  interval: 2,
  lastUpdate: 0,
  started: false,
  status: {state: "connecting"},
};

const TILES = {
  total_concepts: (v) => formatCount(v),
  total_associations: (v) => formatCount(v),
  storage_size_mb: (v) => formatMegabytes(v),
  queries_per_second: (v) => formatNumber(v, 1),
  avg_latency_ms: (v) => formatNumber(v, 1, "ms"),
  cpu_percent: (v) => formatNumber(v, 1, "%"),
  memory_percent: (v) => formatNumber(v, 1, "%"),
};

const charts = createCharts($("charts"));
const cards = new ComponentCards($("components"), {
  interval: () => app.interval,
  onCount: (n) => {
    $("component-count").textContent = n ? String(n) : "";
    $("components-empty").hidden = n > 0;
  },
  onShown: (shown, total) => {
    const text = shown === total ? "" : `${shown} of ${total} shown`;
    if ($("filter-count").textContent !== text) $("filter-count").textContent = text;
  },
});

// Filter and grouping: kept in the address (#name=...&state=...&group=...) so a
// reload or a shared link shows the same view.
function readFilter() {
  const hash = new URLSearchParams(location.hash.slice(1));
  return {name: hash.get("name") || "", state: hash.get("state") || "",
    group: hash.get("group") || ""};
}
function applyFilter() {
  const filter = {name: $("filter-name").value, state: $("filter-state").value,
    group: $("group-by").value};
  const hash = new URLSearchParams(Object.entries(filter).filter(([, v]) => v)).toString();
  history.replaceState(null, "", hash ? `#${hash}` : location.pathname + location.search);
  cards.setFilter(filter);
}
{
  const initial = readFilter();
  $("filter-name").value = initial.name;
  $("filter-state").value = initial.state;
  $("group-by").value = initial.group;
  cards.setFilter(initial);
  $("filter-name").addEventListener("input", applyFilter);
  $("filter-state").addEventListener("change", applyFilter);
  $("group-by").addEventListener("change", applyFilter);
}

const timeline = new EventTimeline(
  {list: $("events"), filter: $("events-component"), notices: $("notices"),
    empty: $("events-empty")},
  (markers) => {
    for (const chart of [charts.charts.compCpu, charts.charts.compMem]) {
      chart.setMarkers(markers);
    }
  });

const connection = new Connection({
  url: wsUrl,
  baseDelay,
  onSnapshot: (doc) => applySnapshot(doc, true),
  onEvent: (event) => timeline.add(event),
  onTokenExpired: () => {
    clearToken();
    app.started = false;
    showAuth("Your token expired: enter a new one.");
  },
  onStatus: (status) => {
    app.status = status;
    renderStatus();
  },
  // Without the WebSocket (server full, restarting...) REST still shows the
  // latest figures, and a 401 explains a refused handshake.
  onClosed: async () => {
    try {
      applySnapshot(await api("/api/status"), true);
      return false;
    } catch (err) {
      return err instanceof ApiError && err.status === 401;
    }
  },
});

// ---- snapshot -> page -------------------------------------------------------

// Each update is measured with the Performance API: "snapshot-script" is the
// page's own script, "snapshot-render" the next frame's work (the charts'
// drawing, style, layout, paint: from its first animation-frame callback
// until the task after it).
// bench/dashboard_bench.py reads them with a PerformanceObserver; the
// timeline keeps only the last hundred or so.
let measured = 0;
function applySnapshot(doc, live) {
  if (++measured % 100 === 0) {
    performance.clearMeasures("snapshot-script");
    performance.clearMeasures("snapshot-render");
  }
  const began = performance.now();
  // Registered before the charts schedule theirs, so it runs first in the
  // frame: what follows (the charts' drawing, style, layout, paint) is "render".
  requestAnimationFrame(() => {
    const frame = performance.now();
    setTimeout(() => {
      performance.measure("snapshot-render", {start: frame, end: performance.now()});
    }, 0);
  });
  renderSnapshot(doc, live);
  performance.measure("snapshot-script", {start: began, end: performance.now()});
}

function renderSnapshot(doc, live) {
  const metrics = doc.metrics || {};
  // Written only when they change: the same text or width written again
  // still invalidates style and layout.
  for (const tile of document.querySelectorAll(".tile")) {
    const key = tile.dataset.metric;
    const value = metrics[key];
    const text = TILES[key](value);
    const shown = tile.querySelector(".tile-value");
    if (shown.textContent !== text) shown.textContent = text;
    const bar = tile.querySelector(".tile-bar > span");
    const width = `${Math.max(0, Math.min(100, Number(value) || 0))}%`;
    if (bar && bar.style.width !== width) bar.style.width = width;
  }
  cards.update(doc.components || {});
  renderHosts($("hosts"), doc.hosts);
  charts.addSnapshot(doc);
  if (live) {
    app.lastUpdate = Date.now();
    $("last-update").textContent = `Last update ${formatClock(metrics.timestamp || Date.now())}`;
    renderStale();
  }
}

// ---- connection status ------------------------------------------------------

function renderStatus() {
  const status = app.status;
  const conn = $("conn");
  const text = $("conn-text");
  const banner = $("banner");
  const now = $("reconnect-now");
  conn.dataset.state = status.state;
  // The last close code, for troubleshooting (and the browser tests).
  conn.dataset.closeCode = status.code == null ? "" : String(status.code);
  let label;
  switch (status.state) {
    case "connected":
      label = "Connected";
      break;
    case "reconnecting": {
      const attempt = `attempt ${status.attempt} of ${status.maxAttempts}`;
      label = status.deadline
        ? `Reconnecting (${attempt}) in ${formatCountdown(status.deadline - Date.now())}`
        : `Reconnecting (${attempt})…`;
      break;
    }
    case "disconnected":
      label = "Disconnected";
      break;
    case "locked":
      label = "Token required";
      break;
    default:
      label = "Connecting…";
  }
  if (text.textContent !== label) text.textContent = label;
  now.hidden = !(status.state === "disconnected" || (status.state === "reconnecting" &&
    status.deadline));
  const message = status.state === "disconnected" ? status.reason || "" : "";
  banner.hidden = !message;
  if (banner.textContent !== message) banner.textContent = message;
}

function renderStale() {
  const limit = 2 * app.interval * 1000;
  const stale = app.lastUpdate > 0 && Date.now() - app.lastUpdate > limit;
  $("stale").hidden = !stale;
  if (stale) {
    const ago = Math.round((Date.now() - app.lastUpdate) / 1000);
    $("stale").textContent = `Data is stale (${ago}s old)`;
  }
  document.body.classList.toggle("is-stale", stale);
}

// Countdown and staleness are clocks, not events: refresh them a few times a second.
setInterval(() => {
  if (app.status.state === "reconnecting" && app.status.deadline) renderStatus();
  renderStale();
}, 250);

$("reconnect-now").addEventListener("click", () => connection.connect());

// ---- auth -------------------------------------------------------------------

function showAuth(message) {
  connection.stop();
  cards.stopLogs();
  $("auth").hidden = false;
  $("main").hidden = true;
  const error = $("auth-error");
  error.hidden = !message;
  error.textContent = message || "";
  $("footer").hidden = true;
  app.status = {state: "locked"};
  renderStatus();
  $("auth-token").focus();
}

onUnauthorized(() => {
  if (!$("auth").hidden) return;
  const had = Boolean(getToken());
  clearToken();
  app.started = false;
  showAuth(had ? "The saved token was not accepted; enter the current one." : "");
});

$("auth-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("auth-token");
  const token = input.value.trim();
  if (!token) return;
  const button = event.target.querySelector("button");
  button.disabled = true;
  setToken(token);
  try {
    // Check the token before leaving the form, so a typo is reported here.
    await api("/api/components");
    input.value = "";
    $("auth").hidden = true;
    $("main").hidden = false;
    $("footer").hidden = false;
    await start();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      clearToken();
      $("auth-error").textContent = "That token was not accepted.";
    } else {
      $("auth-error").textContent = `Could not check the token: ${err.message}`;
    }
    $("auth-error").hidden = false;
    input.select();
  } finally {
    button.disabled = false;
  }
});

// ---- start-up ---------------------------------------------------------------

async function loadHistory() {
  try {
    const history = await api("/api/history");
    charts.setHistory(history.points || []);
  } catch (err) {
    if (err.status === 401) throw err;
    console.warn("Control Center: no history:", err.message);
  }
}

async function start() {
  if (app.started) return;
  app.started = true;
  try {
    await loadHistory();
  } catch (err) {
    if (err.status === 401) {
      app.started = false;
      return; // the auth form is showing
    }
  }
  await timeline.load();
  // The WebSocket sends the latest snapshot at once: no need for /api/status,
  // which answers 503 until the supervisor's first tick.
  connection.connect();
}

async function boot() {
  let info = null;
  try {
    info = await api("/api/info");
  } catch {
    info = null;
  }
  if (info) {
    if (typeof info.interval === "number" && info.interval > 0) app.interval = info.interval;
    if (info.version) $("version").textContent = `v${info.version}`;
  }
  if (info && info.auth_required && !getToken()) {
    showAuth("");
    return;
  }
  await start();
}

boot();
