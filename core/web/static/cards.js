// One card per component: figures, Start/Stop/Restart, and its log panel.
//
// Cards are created once and updated in place, so focus, an open log panel
// and a request in flight survive every snapshot.

import {api} from "./api.js";
import {renderCardMetrics} from "./card-metrics.js";
import {formatClock, formatMegabytes, formatNumber, formatUptime} from "./format.js";

const CAN = {
  start: new Set(["stopped", "error"]),
  stop: new Set(["running", "starting"]),
  restart: new Set(["running", "starting"]),
};
const BUSY_LABEL = {start: "Starting…", stop: "Stopping…", restart: "Restarting…"};
const LABEL = {start: "Start", stop: "Stop", restart: "Restart"};
const MAX_LOG_LINES = 1000;

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
    this.template = document.getElementById("card-template");
    this.cards = new Map();
  }

  update(components) {
    const ids = Object.keys(components);
    for (const [cid, card] of this.cards) {
      if (!(cid in components)) {
        this.stopCardLogs(card);
        card.root.remove();
        this.cards.delete(cid);
      }
    }
    ids.forEach((cid, index) => {
      let card = this.cards.get(cid);
      if (!card) {
        card = this.create(cid);
        this.cards.set(cid, card);
      }
      // Keep config order even when components are added by a reload.
      if (this.container.children[index] !== card.root) {
        this.container.insertBefore(card.root, this.container.children[index] || null);
      }
      this.fill(card, components[cid]);
    });
    this.onCount(ids.length);
  }

  create(cid) {
    const root = this.template.content.firstElementChild.cloneNode(true);
    root.dataset.id = cid;
    root.id = `component-${cid}`;
    const q = (selector) => root.querySelector(selector);
    const card = {
      cid, root, data: null, pending: null, feedbackTimer: null,
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

  fill(card, c) {
    card.data = c;
    const state = c.state || "stopped";
    card.root.dataset.state = state;
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
    f.health.dataset.health = c.health || "";
    renderCardMetrics(card.root, c.metrics);

    setText(card.error, c.error || "");
    card.error.hidden = !c.error;
    const notes = [];
    if (typeof c.next_restart_in === "number") {
      notes.push(`Restarting in ${formatNumber(c.next_restart_in, 1)} s`);
    }
    if (c.exit_code != null && state !== "running") notes.push(`Exit code ${c.exit_code}`);
    setText(card.note, notes.join(" · "));
    card.note.hidden = notes.length === 0;
    this.renderButtons(card);
  }

  renderButtons(card) {
    const state = card.data ? card.data.state : null;
    for (const [action, button] of Object.entries(card.buttons)) {
      button.disabled = card.pending !== null || !CAN[action].has(state);
      const busy = card.pending === action;
      button.classList.toggle("is-busy", busy);
      button.setAttribute("aria-busy", busy ? "true" : "false");
      setText(button, busy ? BUSY_LABEL[action] : LABEL[action]);
      // Every card has a "Stop": name the component for screen readers.
      const name = card.data ? card.data.name || card.cid : card.cid;
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
      if (result && result.component) this.fill(card, result.component);
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
