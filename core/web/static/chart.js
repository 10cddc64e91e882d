// A small SVG line chart: time on x, one or more series on y.
//
// Our own code on purpose (no CDN, no third-party bundle): the dashboard only
// needs lines over time, a y scale, two time labels and a legend.
//
//   const chart = new LineChart(element, {title: "Queries / s", unit: "q/s"});
//   chart.setSeries([{key: "qps", label: "Queries / s"}]);
//   chart.setPoints([{t: Date.now(), values: {qps: 3.2}}, ...]);
//   chart.push(Date.now(), {qps: 4.1});
//
// Each series is one <path> whose data-points attribute counts its vertices
// (the browser tests read it).

const SVG_NS = "http://www.w3.org/2000/svg";
const HEIGHT = 150;
const PAD = {top: 10, right: 10, bottom: 22, left: 46};

export const PALETTE = ["#4f9dff", "#f7b955", "#3ecf8e", "#e86bb6", "#a78bfa", "#ff7a59",
  "#2dd4bf", "#facc15"];

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

/** Smallest "nice" number (1, 2, 2.5, 5 times a power of ten) >= value. */
export function niceCeil(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * power >= value * (1 - 1e-9)) return step * power;
  }
  return 10 * power;
}

function formatTick(value) {
  if (value >= 1e6) return `${+(value / 1e6).toFixed(1)}M`;
  if (value >= 1e4) return `${+(value / 1e3).toFixed(1)}k`;
  if (value >= 100) return String(Math.round(value));
  return String(+value.toFixed(2));
}

function formatValue(value) {
  if (Math.abs(value) >= 100) return formatTick(value);
  return value.toFixed(Math.abs(value) < 1 && value !== 0 ? 2 : 1);
}

function formatTime(ms) {
  return new Date(ms).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit",
    second: "2-digit", hour12: false});
}

export class LineChart {
  /**
   * @param {HTMLElement} container  element the chart is drawn into (emptied)
   * @param {object} options  title, unit, max (fixed y max, e.g. 100 for %),
   *   maxPoints (oldest points are dropped beyond it), format (legend values)
   */
  constructor(container, options = {}) {
    this.container = container;
    this.title = options.title || "";
    this.unit = options.unit || "";
    this.fixedMax = options.max ?? null;
    this.maxPoints = options.maxPoints || 900;
    this.format = options.format || ((v) => `${formatValue(v)}${this.unit ? ` ${this.unit}` : ""}`);
    this.series = [];
    this.points = [];
    this.markers = [];
    this.width = 0;
    this.knownWidth = 0;
    this.drawnWidth = 0;
    this.lines = null;
    this.legendValues = null;
    this.pending = false;

    container.classList.add("chart");
    container.replaceChildren();
    const head = document.createElement("div");
    head.className = "chart-head";
    const heading = document.createElement("h3");
    heading.className = "chart-title";
    heading.textContent = this.title;
    this.legend = document.createElement("ul");
    this.legend.className = "chart-legend";
    head.append(heading, this.legend);
    this.svg = svg("svg", {class: "chart-svg", role: "img", preserveAspectRatio: "none"});
    this.svg.setAttribute("aria-label", this.title);
    container.append(head, this.svg);

    // Redraw at the new width so text and strokes keep their size.
    if (typeof ResizeObserver === "function") {
      // The width is read here, where layout is fresh, not in render(): a
      // read there forces a layout of the whole page (1,000 cards) in the
      // middle of the frame, and another one follows the drawing.
      this.observer = new ResizeObserver(() => {
        this.knownWidth = this.container.clientWidth;
        this.scheduleRender();
      });
      this.observer.observe(container);
    }
  }

  /** Replace the series list ([{key, label, color?}]); keeps the points. */
  setSeries(series) {
    const same = series.length === this.series.length &&
      series.every((s, i) => s.key === this.series[i].key && s.label === this.series[i].label);
    if (same) return;
    this.series = series.map((s, i) => ({...s, color: s.color || PALETTE[i % PALETTE.length]}));
    this.scheduleRender();
  }

  /** Replace all points ([{t: ms, values: {key: number|null}}], oldest first). */
  setPoints(points) {
    this.points = points.slice(-this.maxPoints);
    this.scheduleRender();
  }

  /** Vertical markers ([{t: ms, kind, label}]): restarts and crashes on the time axis. */
  setMarkers(markers) {
    this.markers = markers;
    this.scheduleRender();
  }

  /** Append one point (t in ms). */
  push(t, values) {
    this.points.push({t, values});
    if (this.points.length > this.maxPoints) {
      this.points.splice(0, this.points.length - this.maxPoints);
    }
    this.scheduleRender();
  }

  // Coalesce bursts (history load, resize) into one draw per frame; drawing
  // synchronously when the page is hidden keeps tests and background tabs
  // consistent (requestAnimationFrame does not run there).
  scheduleRender() {
    if (this.pending) return;
    if (document.hidden || typeof requestAnimationFrame !== "function") {
      this.render();
      return;
    }
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.render();
    });
  }

  render() {
    const measured = this.knownWidth || this.container.clientWidth;
    const width = Math.max(200, Math.round(measured || 600));
    this.width = width;
    const plotW = width - PAD.left - PAD.right;
    const plotH = HEIGHT - PAD.top - PAD.bottom;
    if (this.drawnWidth !== width) {
      this.drawnWidth = width;
      this.svg.setAttribute("viewBox", `0 0 ${width} ${HEIGHT}`);
      this.svg.setAttribute("width", String(width));
      this.svg.setAttribute("height", String(HEIGHT));
    }
    // The grid and markers are a few elements, drawn afresh; the lines are
    // kept from one draw to the next and only their paths change (a new
    // element per line and per legend entry on every snapshot was most of
    // the charts' cost in the frame).
    const keep = this.lines && this.lines.series === this.series ? this.lines : null;
    if (!this.layers) {
      this.layers = {grid: svg("g", {class: "chart-grid"}),
        marks: svg("g", {class: "chart-markers"}), lines: svg("g", {class: "chart-lines"})};
      this.svg.replaceChildren(this.layers.grid, this.layers.marks, this.layers.lines);
    }

    const points = this.points;
    let top = 0;
    for (const p of points) {
      for (const s of this.series) {
        const v = p.values[s.key];
        if (typeof v === "number" && Number.isFinite(v) && v > top) top = v;
      }
    }
    const yMax = this.fixedMax ?? niceCeil(top);
    const t0 = points.length ? points[0].t : 0;
    const t1 = points.length ? points[points.length - 1].t : 1;
    const span = Math.max(t1 - t0, 1);
    const x = (t) => PAD.left + (points.length > 1 ? ((t - t0) / span) * plotW : plotW);
    const y = (v) => PAD.top + plotH - (Math.min(v, yMax) / yMax) * plotH;

    const grid = this.layers.grid;
    grid.replaceChildren();
    for (const fraction of [0, 0.5, 1]) {
      const gy = PAD.top + plotH - fraction * plotH;
      grid.append(svg("line", {x1: PAD.left, x2: width - PAD.right, y1: gy, y2: gy}));
      const label = svg("text", {x: PAD.left - 6, y: gy + 4, "text-anchor": "end"});
      label.textContent = formatTick(yMax * fraction);
      grid.append(label);
    }
    if (points.length) {
      const first = svg("text", {x: PAD.left, y: HEIGHT - 6, "text-anchor": "start"});
      first.textContent = formatTime(t0);
      const last = svg("text", {x: width - PAD.right, y: HEIGHT - 6, "text-anchor": "end"});
      last.textContent = formatTime(t1);
      grid.append(first, last);
    } else {
      const empty = svg("text", {x: PAD.left + plotW / 2, y: PAD.top + plotH / 2,
        "text-anchor": "middle", class: "chart-empty"});
      empty.textContent = "Waiting for data…";
      grid.append(empty);
    }

    const marks = this.layers.marks;
    if (marks.firstChild) marks.replaceChildren();
    if (points.length > 1) {
      for (const m of this.markers) {
        if (m.t < t0 || m.t > t1) continue;
        const mx = x(m.t).toFixed(1);
        const line = svg("line", {x1: mx, x2: mx, y1: PAD.top, y2: PAD.top + plotH,
          class: "chart-marker", "data-kind": m.kind});
        const title = svg("title", {});
        title.textContent = m.label;
        line.append(title);
        marks.append(line);
      }
    }

    const baseline = PAD.top + plotH;
    const lines = keep || {series: this.series, paths: new Map()};
    this.lines = lines;
    if (!keep) this.layers.lines.replaceChildren();
    this.series.forEach((s) => {
      let d = "";
      let count = 0;
      let open = false; // a null value breaks the line
      let area = "";
      let runStart = null;
      let runEnd = null;
      for (const p of points) {
        const v = p.values[s.key];
        if (typeof v !== "number" || !Number.isFinite(v)) {
          if (open && this.series.length === 1) area += `L${runEnd},${baseline}L${runStart},${baseline}Z`;
          open = false;
          continue;
        }
        const px = x(p.t).toFixed(1);
        const py = y(Math.max(v, 0)).toFixed(1);
        d += `${open ? "L" : "M"}${px},${py}`;
        if (this.series.length === 1) area += `${open ? "L" : "M"}${px},${py}`;
        if (!open) runStart = px;
        runEnd = px;
        open = true;
        count += 1;
      }
      if (open && this.series.length === 1) area += `L${runEnd},${baseline}L${runStart},${baseline}Z`;
      let kept = lines.paths.get(s.key);
      if (!kept) {
        kept = {
          area: svg("path", {fill: s.color, "fill-opacity": "0.12", stroke: "none",
            class: "chart-area"}),
          line: svg("path", {fill: "none", stroke: s.color, "stroke-width": "2",
            "stroke-linejoin": "round", "stroke-linecap": "round", class: "chart-line",
            "data-series": s.key}),
        };
        lines.paths.set(s.key, kept);
      }
      if (kept.line.parentNode !== this.layers.lines) this.layers.lines.append(kept.line);
      if (area) {
        if (kept.area.getAttribute("d") !== area) kept.area.setAttribute("d", area);
        if (kept.area.parentNode !== this.layers.lines) {
          this.layers.lines.insertBefore(kept.area, kept.line);
        }
      } else if (kept.area.parentNode === this.layers.lines) {
        kept.area.remove();
      }
      if (kept.line.getAttribute("d") !== d) kept.line.setAttribute("d", d);
      if (kept.line.dataset.points !== String(count)) kept.line.dataset.points = String(count);
    });
    this.renderLegend(keep !== null);
  }

  renderLegend(same = false) {
    const last = this.points[this.points.length - 1];
    const value = (s) => {
      const v = last ? last.values[s.key] : null;
      return typeof v === "number" ? this.format(v) : "–";
    };
    if (same && this.legendValues && this.legendValues.length === this.series.length) {
      // The same lines: only the figures change.
      this.series.forEach((s, i) => {
        const text = value(s);
        if (this.legendValues[i].textContent !== text) this.legendValues[i].textContent = text;
      });
      return;
    }
    this.legendValues = [];
    const items = this.series.map((s) => {
      const li = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = s.color;
      li.append(swatch, `${s.label} `);
      const strong = document.createElement("strong");
      strong.textContent = value(s);
      li.append(strong);
      this.legendValues.push(strong);
      return li;
    });
    this.legend.replaceChildren(...items);
  }

  destroy() {
    if (this.observer) this.observer.disconnect();
  }
}
