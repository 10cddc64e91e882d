// The dashboard's history charts, fed from /api/history then each snapshot.

import {LineChart} from "./chart.js";

// "2026-01-02T03:04:05.123456Z" -> ms; trims sub-millisecond digits that
// not every engine parses.
export function parseTime(iso) {
  if (typeof iso !== "string") return Number.NaN;
  return Date.parse(iso.replace(/(\.\d{3})\d+/, "$1"));
}

// A chart of 1,000 lines says nothing and costs a frame: the per-component
// charts draw the MAX_SERIES components with the highest latest value.
export const MAX_SERIES = 12;

function top(components, key) {
  const ids = Object.keys(components || {});
  if (ids.length <= MAX_SERIES) return ids;
  const value = (cid) => (typeof components[cid][key] === "number" ? components[cid][key] : -1);
  const chosen = new Set([...ids].sort((a, b) => value(b) - value(a)).slice(0, MAX_SERIES));
  return ids.filter((cid) => chosen.has(cid));  // in config order
}

function perComponent(components, key, ids) {
  const values = {};
  for (const cid of ids) {
    const c = components[cid];
    values[cid] = c && typeof c[key] === "number" ? c[key] : null;
  }
  return values;
}

// Each component's own metrics (from its probe) as "cid/name" series: the
// MAX_SERIES with the highest latest value.
function ownMetrics(components) {
  const found = [];
  for (const [cid, c] of Object.entries(components || {})) {
    for (const [name, value] of Object.entries((c && c.metrics) || {})) {
      if (typeof value === "number") found.push({key: `${cid}/${name}`, cid, name, value});
    }
  }
  found.sort((a, b) => b.value - a.value);
  return found.slice(0, MAX_SERIES);
}

function ownValues(components, keys) {
  const values = {};
  for (const {key, cid, name} of keys) {
    const m = components[cid] && components[cid].metrics;
    values[key] = m && typeof m[name] === "number" ? m[name] : null;
  }
  return values;
}

export function createCharts(container) {
  const make = (id, options) => {
    const element = document.createElement("figure");
    element.className = "chart-card";
    element.id = id;
    container.append(element);
    return new LineChart(element, options);
  };

  const system = make("chart-system", {title: "System CPU & memory", unit: "%", max: 100});
  system.setSeries([{key: "cpu_percent", label: "CPU"}, {key: "memory_percent", label: "Memory"}]);
  const compCpu = make("chart-component-cpu", {title: "Component CPU", unit: "%"});
  const compMem = make("chart-component-memory", {title: "Component memory", unit: "MB"});
  const compOwn = make("chart-component-metrics", {title: "Component metrics"});
  let ownKeys = [];
  const storage = make("chart-storage", {title: "Storage size", unit: "MB"});
  storage.setSeries([{key: "storage_size_mb", label: "Size", color: "#3ecf8e"}]);
  const qps = make("chart-qps", {title: "Queries per second", unit: "q/s"});
  qps.setSeries([{key: "queries_per_second", label: "Queries/s", color: "#a78bfa"}]);
  const latency = make("chart-latency", {title: "Average latency", unit: "ms"});
  latency.setSeries([{key: "avg_latency_ms", label: "Latency", color: "#f7b955"}]);

  const metricCharts = [system, storage, qps, latency];
  let names = {};
  let lastT = -Infinity;

  function series(ids) {
    return ids.map((cid) => ({key: cid, label: names[cid] || cid}));
  }

  function ownSeries(keys) {
    ownKeys = keys;
    compOwn.setSeries(keys.map(({key, cid, name}) => ({key, label: `${names[cid] || cid}: ${name}`})));
  }

  return {
    charts: {system, compCpu, compMem, compOwn, storage, qps, latency},

    /** Replace everything with /api/history's points (oldest first). */
    setHistory(points) {
      const rows = points
        .map((p) => ({t: parseTime(p.timestamp), p}))
        .filter((row) => Number.isFinite(row.t));
      for (const chart of metricCharts) {
        chart.setPoints(rows.map(({t, p}) => ({t, values: p.metrics || {}})));
      }
      // Every component seen in the history, its latest figures winning.
      const latest = {};
      for (const {p} of rows) Object.assign(latest, p.components || {});
      const cpuIds = top(latest, "cpu_percent");
      const memIds = top(latest, "memory_mb");
      compCpu.setSeries(series(cpuIds));
      compMem.setSeries(series(memIds));
      compCpu.setPoints(rows.map(({t, p}) => ({t, values: perComponent(p.components || {},
        "cpu_percent", cpuIds)})));
      compMem.setPoints(rows.map(({t, p}) => ({t, values: perComponent(p.components || {},
        "memory_mb", memIds)})));
      ownSeries(ownMetrics(latest));
      compOwn.setPoints(rows.map(({t, p}) => ({t, values: ownValues(p.components || {}, ownKeys)})));
      lastT = rows.length ? rows[rows.length - 1].t : -Infinity;
    },

    /** Append one live snapshot (skipped when not newer than the last point). */
    addSnapshot(doc) {
      const components = doc.components || {};
      const cpuIds = top(components, "cpu_percent");
      const memIds = top(components, "memory_mb");
      for (const cid of new Set([...cpuIds, ...memIds])) {
        names[cid] = components[cid].name || cid;
      }
      compCpu.setSeries(series(cpuIds));
      compMem.setSeries(series(memIds));
      ownSeries(ownMetrics(components));
      const t = parseTime(doc.metrics && doc.metrics.timestamp);
      if (!Number.isFinite(t) || t <= lastT) return;
      lastT = t;
      for (const chart of metricCharts) chart.push(t, doc.metrics);
      compCpu.push(t, perComponent(components, "cpu_percent", cpuIds));
      compMem.push(t, perComponent(components, "memory_mb", memIds));
      compOwn.push(t, ownValues(components, ownKeys));
    },
  };
}
