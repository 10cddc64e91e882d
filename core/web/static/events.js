// The event timeline, the crash notices and the charts' restart markers.
//
// Events come from GET /api/events at start, then from the stream (the page
// subscribes with {"events": true}). The timeline keeps the newest
// MAX_SHOWN; a crash or a give-up also shows a notice that goes by itself
// (role="status": it never takes the focus or blocks the page).

import {api} from "./api.js";
import {formatClock} from "./format.js";

const MAX_SHOWN = 200;
const NOTICE_MS = 8000;
const MARKED = new Set(["crashed", "restart_scheduled", "gave_up"]);

const WORDS = {
  state: (e) => `${e.old} → ${e.new}${e.reason ? `: ${e.reason}` : ""}`,
  crashed: (e) => `crashed: ${e.reason || "exited"}`,
  restart_scheduled: (e) => `restart in ${Number(e.delay).toFixed(1)} s`,
  gave_up: (e) => `gave up: ${e.reason || ""}`,
  unhealthy: (e) => `unhealthy: ${e.reason || ""}`,
  recovered: () => "healthy again",
  probe_error: (e) => `probe failed: ${e.error || ""}`,
  reload: (e) => `config reloaded (added ${(e.added || []).length}, removed ` +
    `${(e.removed || []).length}, changed ${(e.changed || []).length})`,
  control: (e) => `${e.action} by ${e.actor}${e.address ? ` from ${e.address}` : ""}: ${e.result}`,
  restart: (e) => `restarted: ${e.reason || ""}`,
};

export function describeEvent(event) {
  const words = WORDS[event.kind];
  return words ? words(event) : event.kind;
}

export class EventTimeline {
  /**
   * @param {object} els  list (ul), filter (select), notices (container)
   * @param {function} onMarkers  called with [{t, kind, label, component}] for the charts
   */
  constructor(els, onMarkers) {
    this.els = els;
    this.onMarkers = onMarkers || (() => {});
    this.events = [];
    this.lastId = 0;
    this.filter = "";
    els.filter.addEventListener("change", () => {
      this.filter = els.filter.value;
      this.render();
    });
  }

  async load() {
    try {
      const {events} = await api("/api/events?limit=200");
      for (const event of events) this.add(event, false);
      this.render();
    } catch {
      // no access or an old server: the timeline fills from the stream
    }
  }

  /** One event from the stream (or the first load); `live` may show a notice. */
  add(event, live = true) {
    if (event.id <= this.lastId) return;
    this.lastId = event.id;
    this.events.push(event);
    if (this.events.length > MAX_SHOWN) this.events.splice(0, this.events.length - MAX_SHOWN);
    if (event.component && ![...this.els.filter.options].some((o) => o.value === event.component)) {
      const option = document.createElement("option");
      option.value = option.textContent = event.component;
      this.els.filter.append(option);
    }
    if (live && (event.kind === "crashed" || event.kind === "gave_up")) this.notice(event);
    if (live) this.render();
  }

  render() {
    const shown = this.events.filter((e) => !this.filter || e.component === this.filter);
    const items = shown.slice(-MAX_SHOWN).reverse().map((e) => {
      const li = document.createElement("li");
      li.className = "event";
      li.dataset.kind = e.kind;
      const time = document.createElement("time");
      time.dateTime = e.time;
      time.textContent = formatClock(Date.parse(e.time));
      const who = document.createElement("span");
      who.className = "event-component";
      who.textContent = e.component || "Control Center";
      const what = document.createElement("span");
      what.className = "event-text";
      what.textContent = describeEvent(e);
      li.append(time, who, what);
      return li;
    });
    this.els.list.replaceChildren(...items);
    this.els.empty.hidden = items.length > 0;
    this.onMarkers(this.events.filter((e) => MARKED.has(e.kind)).map((e) => ({
      t: Date.parse(e.time), kind: e.kind, component: e.component,
      label: `${e.component}: ${describeEvent(e)}`})));
  }

  notice(event) {
    const note = document.createElement("div");
    note.className = "notice";
    note.dataset.kind = event.kind;
    note.setAttribute("role", "status");
    note.textContent = `${event.component} ${describeEvent(event)}`;
    const close = document.createElement("button");
    close.type = "button";
    close.className = "notice-close";
    close.setAttribute("aria-label", "Dismiss");
    close.textContent = "×";
    close.addEventListener("click", () => note.remove());
    note.append(close);
    this.els.notices.append(note);
    while (this.els.notices.children.length > 3) this.els.notices.firstElementChild.remove();
    setTimeout(() => note.remove(), NOTICE_MS);
  }
}
