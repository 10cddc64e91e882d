// One card per component: figures, Start/Stop/Restart, and its log panel.
//
// Cards are created once and updated in place, so focus, an open log panel
// and a request in flight survive every snapshot.

import {api} from "./api.js";
import {renderCardMetrics} from "./card-metrics.js";
import {formatClock, formatMegabytes, formatNumber, formatUptime} from "./format.js";
import {countInstances, renderScale} from "./scale.js";

const CAN = {
  start: new Set(["stopped", "error"]),
  stop: new Set(["running", "starting"]),
  restart: new Set(["running", "starting"]),
};
const BUSY_LABEL = {start: "Starting…", stop: "Stopping…", restart: "Restarting…"};
const LABEL = {start: "Start", stop: "Stop", restart: "Restart"};
const MAX_LOG_LINES = 1000;
// Up to this many cards, every shown card is filled on every update. Past
// it, only the cards on screen (or near it) are: one off screen is filled,
// with its latest figures, as it scrolls into view.
// With 1,000 cards that is the difference between filling 1,000 and ~30.
export const EAGER_CARDS = 100;
const ON_SCREEN_MARGIN = "600px 0px";

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

export class ComponentCards {
  /**
   * @param {HTMLElement} container
   * @param {object} options  interval: () => seconds; onCount(n)
   */
  constructor(container, options) {
    this.container = container;
    this.interval = options.interval;
    this.onCount = options.onCount || (() => {});
    this.onShown = options.onShown || (() => {});
    this.template = document.getElementById("card-template");
    this.cards = new Map();
    this.groups = new Map();
    this.filter = {name: "", state: "", group: ""};
    this.order = [];
    // Which cards are on screen. The browser already knows which ones it
    // renders (.card has content-visibility: auto) and says so as each one
    // starts or stops being skipped: that signal where there is one, not an
    // IntersectionObserver over every card on top of the browser's own
    // (computing 1,000 intersections was a third of each frame).
    this.screen = null;
    this.tracked = false;
    if (typeof ContentVisibilityAutoStateChangeEvent === "function") {
      this.tracked = true;
      container.addEventListener("contentvisibilityautostatechange",
        (event) => this.onScreenChange(event.target, !event.skipped));
    } else if (typeof IntersectionObserver === "function") {
      this.tracked = true;
      this.screen = new IntersectionObserver((entries) => {
        for (const entry of entries) this.onScreenChange(entry.target, entry.isIntersecting);
      }, {rootMargin: ON_SCREEN_MARGIN});
    }
  }

  onScreenChange(element, onScreen) {
    const card = this.cards.get(element.dataset.id);
    if (!card || card.root !== element) return;
    card.onScreen = onScreen;
    if (onScreen && !card.root.hidden && card.data !== card.latest) {
      this.fill(card, card.latest, card.latestRest);
    }
  }

  // Whether an update fills `card` now, or leaves it until it is on screen.
  fillsNow(card) {
    return card.data === null || card.onScreen || !this.tracked ||
      this.cards.size <= EAGER_CARDS;
  }

  /** Show only cards matching `name` (in name or id) and `state`, grouped by `group`. */
  setFilter(filter) {
    this.filter = {...this.filter, ...filter};
    this.filter.name = (this.filter.name || "").trim().toLowerCase();
    this.layout();
  }

  matches(card) {
    const {name, state} = this.filter;
    const c = card.latest;
    if (state && (c.state || "stopped") !== state) return false;
    if (!name) return true;
    return card.cid.toLowerCase().includes(name) ||
      (c.name || "").toLowerCase().includes(name);
  }

  groupKey(card) {
    const by = this.filter.group;
    if (!by) return "";
    if (by === "host") return card.latest.host || "this machine";
    return String(card.latest[by] || (by === "state" ? "stopped" : "other"));
  }

  group(key) {
    let group = this.groups.get(key);
    if (!group) {
      const root = document.createElement("section");
      root.className = "group";
      const title = document.createElement("h3");
      title.className = "group-title";
      const label = document.createElement("span");
      const count = document.createElement("span");
      count.className = "count";
      title.append(label, " ", count);
      const list = document.createElement("div");
      list.className = "cards";
      root.append(title, list);
      label.textContent = key;
      title.hidden = key === "";
      group = {key, root, title, count, list, size: 0};
      this.groups.set(key, group);
    }
    return group;
  }

  update(components) {
    const ids = Object.keys(components);
    for (const [cid, card] of this.cards) {
      if (!(cid in components)) {
        this.stopCardLogs(card);
        if (this.screen) this.screen.unobserve(card.root);
        card.root.remove();
        this.cards.delete(cid);
      }
    }
    for (const cid of ids) {
      let card = this.cards.get(cid);
      if (!card) {
        card = this.create(cid);
        this.cards.set(cid, card);
        if (this.screen) this.screen.observe(card.root);
      }
      if (!this.older(card, components[cid], false)) {
        card.latest = components[cid];
        card.latestRest = false;
      }
    }
    this.order = ids;
    countInstances(components);
    this.layout();
    this.onCount(ids.length);
  }

  // Places every card in its group, in config order, and fills the visible
  // ones; a hidden card is filled when it is shown again (no work per update
  // for what nobody sees).
  layout() {
    const used = new Map();
    let shown = 0;
    for (const cid of this.order) {
      const card = this.cards.get(cid);
      if (!card || !card.latest) continue;
      const visible = this.matches(card);
      if (card.root.hidden === visible) card.root.hidden = !visible;
      if (!visible) continue;
      shown += 1;
      const group = this.group(this.groupKey(card));
      const at = used.get(group) || 0;
      used.set(group, at + 1);
      if (group.list.children[at] !== card.root) {
        group.list.insertBefore(card.root, group.list.children[at] || null);
      }
      if (card.data !== card.latest) {
        if (this.fillsNow(card)) this.fill(card, card.latest, card.latestRest);
        else this.fillState(card, card.latest);
      }
    }
    // Hidden cards go after the shown ones of whichever list holds them.
    let index = 0;
    for (const key of [...this.groups.keys()].sort()) {
      const group = this.groups.get(key);
      const size = used.get(group) || 0;
      if (group.root.hidden !== (size === 0)) group.root.hidden = size === 0;
      if (group.size !== size) {
        group.size = size;
        group.count.textContent = String(size);
      }
      if (this.container.children[index] !== group.root) {
        this.container.insertBefore(group.root, this.container.children[index] || null);
      }
      index += 1;
    }
    this.onShown(shown, this.order.length);
  }

  create(cid) {
    const root = this.template.content.firstElementChild.cloneNode(true);
    root.dataset.id = cid;
    root.id = `component-${cid}`;
    const q = (selector) => root.querySelector(selector);
    const card = {
      cid, root, data: null, latest: null, latestRest: false, pending: null, onScreen: false,
      feedbackTimer: null, buttonsKey: "",
      name: q(".card-name"), state: q(".state-text"), error: q(".card-error"),
      note: q(".card-note"), feedback: q(".card-feedback"), logsName: q(".logs .sr-only"),
      fields: {
        pid: q(".f-pid"), uptime: q(".f-uptime"), cpu: q(".f-cpu"), memory: q(".f-memory"),
        restarts: q(".f-restarts"), health: q(".f-health"),
      },
      buttons: Object.fromEntries([...root.querySelectorAll("[data-action]")].map((b) =>
        [b.dataset.action, b])),
      logs: {details: q(".logs"), view: q(".log-view"), lastSeq: 0, timer: null, busy: false},
    };
    card.idLine = q(".card-id");
    root.setAttribute("aria-labelledby", `component-${cid}-name`);
    card.name.id = `component-${cid}-name`;
    for (const [action, button] of Object.entries(card.buttons)) {
      button.addEventListener("click", () => this.act(card, action));
    }
    card.logs.details.addEventListener("toggle", () => {
      if (card.logs.details.open) this.startCardLogs(card);
      else this.stopCardLogs(card);
    });
    return card;
  }

  // Whether `c` is older than what the card shows. A REST answer and a
  // snapshot travel on two connections, so one built earlier can arrive later
  // (a snapshot saying "starting" after the answer to Start said "running").
  // Both carry `last_updated`, the time of the last snapshot published before
  // they were built: a REST answer with stamp T is newer than the snapshot of
  // T and older than any later one.
  older(card, c, rest) {
    if (!card.latest) return false;
    const at = c.last_updated || "";
    const known = card.latest.last_updated || "";
    return at < known || (at === known && card.latestRest && !rest);
  }

  // An off-screen card's state stays current (a rare change, and what the
  // page is searched by); its figures wait until it is on screen.
  fillState(card, c) {
    const state = c.state || "stopped";
    if (card.root.dataset.state !== state) {
      card.root.dataset.state = state;
      setText(card.state, state);
    }
  }

  fill(card, c, rest = false) {
    card.data = c;
    card.latest = c;
    card.latestRest = rest;
    const state = c.state || "stopped";
    // Writes only what changed: an attribute set to its own value still
    // invalidates style, and most of 1,000 cards change only their figures.
    if (card.root.dataset.state !== state) card.root.dataset.state = state;
    setText(card.name, c.name || card.cid);
    const deps = Array.isArray(c.depends_on) && c.depends_on.length
      ? ` · needs ${c.depends_on.join(", ")}` : "";
    setText(card.idLine, `${card.cid}${deps}`);
    setText(card.logsName, ` of ${c.name || card.cid}`);
    setText(card.state, state);
    const f = card.fields;
    setText(f.pid, c.pid == null ? "–" : String(c.pid));
    setText(f.uptime, formatUptime(c.uptime));
    setText(f.cpu, formatNumber(c.cpu_percent, 1, "%"));
    setText(f.memory, formatMegabytes(c.memory_mb));
    setText(f.restarts, c.restarts == null ? "–" : String(c.restarts));
    setText(f.health, c.health || "–");
    if (f.health.dataset.health !== (c.health || "")) f.health.dataset.health = c.health || "";
    renderCardMetrics(card.root, c.metrics);

    setText(card.error, c.error || "");
    if (card.error.hidden !== !c.error) card.error.hidden = !c.error;
    const notes = [];
    if (typeof c.next_restart_in === "number") {
      notes.push(`Restarting in ${formatNumber(c.next_restart_in, 1)} s`);
    }
    if (c.exit_code != null && state !== "running") notes.push(`Exit code ${c.exit_code}`);
    setText(card.note, notes.join(" · "));
    if (card.note.hidden !== (notes.length === 0)) card.note.hidden = notes.length === 0;
    this.renderButtons(card);
    renderScale(card, c, (text, kind) => this.showFeedback(card, text, kind));
  }

  renderButtons(card) {
    const state = card.data ? card.data.state : null;
    const name = card.data ? card.data.name || card.cid : card.cid;
    // Unchanged (the usual update): no attribute writes, no style recalculation.
    const key = `${state}|${card.pending}|${name}`;
    if (card.buttonsKey === key) return;
    card.buttonsKey = key;
    for (const [action, button] of Object.entries(card.buttons)) {
      button.disabled = card.pending !== null || !CAN[action].has(state);
      const busy = card.pending === action;
      button.classList.toggle("is-busy", busy);
      button.setAttribute("aria-busy", busy ? "true" : "false");
      setText(button, busy ? BUSY_LABEL[action] : LABEL[action]);
      // Every card has a "Stop": name the component for screen readers.
      button.setAttribute("aria-label", `${busy ? BUSY_LABEL[action] : LABEL[action]} ${name}`);
    }
  }

  showFeedback(card, text, kind) {
    clearTimeout(card.feedbackTimer);
    card.feedback.textContent = text;
    card.feedback.dataset.kind = kind;
    if (kind === "ok") {
      card.feedbackTimer = setTimeout(() => {
        card.feedback.textContent = "";
      }, 8000);
    }
  }

  async act(card, action) {
    if (card.pending) return;
    const focused = document.activeElement === card.buttons[action];
    card.pending = action;
    this.renderButtons(card);
    this.showFeedback(card, `${BUSY_LABEL[action]}`, "busy");
    try {
      const result = await api(`/api/components/${encodeURIComponent(card.cid)}/${action}`,
        {method: "POST"});
      card.pending = null;
      if (result && result.component && !this.older(card, result.component, true)) {
        card.latest = result.component;
        card.latestRest = true;
        this.layout();
      }
      const now = result && result.component ? result.component.state : "done";
      this.showFeedback(card, `${LABEL[action]} accepted: now ${now}.`, "ok");
    } catch (err) {
      card.pending = null;
      const status = err.status ? ` (${err.status})` : "";
      this.showFeedback(card, `${LABEL[action]} failed${status}: ${err.message}`, "error");
    } finally {
      card.pending = null;
      this.renderButtons(card);
      // The clicked button may now be disabled; keep keyboard users on the card.
      if (focused && card.buttons[action].disabled) {
        const next = Object.values(card.buttons).find((b) => !b.disabled);
        if (next) next.focus();
      }
    }
  }

  // ---- logs ------------------------------------------------------------------

  async startCardLogs(card) {
    const logs = card.logs;
    this.stopCardLogs(card);
    logs.view.replaceChildren();
    logs.lastSeq = 0;
    logs.view.dataset.loading = "true";
    await this.pollLogs(card, true);
    delete logs.view.dataset.loading;
    if (!logs.details.open) return;
    logs.timer = setInterval(() => this.pollLogs(card, false), this.interval() * 1000);
  }

  stopCardLogs(card) {
    clearInterval(card.logs.timer);
    card.logs.timer = null;
  }

  stopLogs() {
    for (const card of this.cards.values()) this.stopCardLogs(card);
  }

  async pollLogs(card, first) {
    const logs = card.logs;
    if (logs.busy) return;
    logs.busy = true;
    try {
      const query = first ? "lines=200" : `after=${logs.lastSeq}&lines=1000`;
      const result = await api(`/api/components/${encodeURIComponent(card.cid)}/logs?${query}`);
      if (!logs.details.open) return;
      this.appendLogs(card, result.lines || []);
      if (typeof result.last_seq === "number") logs.lastSeq = result.last_seq;
    } catch (err) {
      if (first) this.appendLogs(card, [{stream: "supervisor", text: `Cannot load logs: ` +
        `${err.message}`}]);
    } finally {
      logs.busy = false;
    }
  }

  appendLogs(card, lines) {
    if (!lines.length) {
      if (!card.logs.view.childElementCount) card.logs.view.dataset.empty = "true";
      return;
    }
    delete card.logs.view.dataset.empty;
    const view = card.logs.view;
    const atBottom = view.scrollHeight - view.scrollTop - view.clientHeight < 24;
    const fragment = document.createDocumentFragment();
    for (const line of lines) {
      const row = document.createElement("span");
      row.className = `log-line log-${line.stream || "stdout"}`;
      if (line.seq != null) row.dataset.seq = String(line.seq);
      const time = document.createElement("time");
      time.textContent = formatClock(line.time);
      row.append(time, ` ${line.text}\n`);
      fragment.append(row);
    }
    view.append(fragment);
    while (view.childElementCount > MAX_LOG_LINES) view.firstElementChild.remove();
    if (atBottom) view.scrollTop = view.scrollHeight;
  }
}
