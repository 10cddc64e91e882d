// A component's own metrics (snapshot `components.<id>.metrics`) on its card.
//
// One <dl class="card-stats card-metrics"> after the card's figures, made on
// first use and updated in place: a <div><dt>name</dt><dd>value</dd></div>
// per metric, in the order the probe gave them; hidden when there are none.

import {formatNumber} from "./format.js";

function label(name) {
  const text = name.replace(/_/g, " ").trim();
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function value(number) {
  if (Number.isInteger(number)) return number.toLocaleString("en-US");
  return formatNumber(number, Math.abs(number) >= 100 ? 1 : 2);
}

/** Show `metrics` ({name: number}) on the card whose root element is `root`. */
export function renderCardMetrics(root, metrics) {
  const entries = metrics && typeof metrics === "object"
    ? Object.entries(metrics).filter(([, v]) => typeof v === "number" && Number.isFinite(v))
    : [];
  let list = root.querySelector(".card-metrics");
  if (!list) {
    if (!entries.length) return;
    list = document.createElement("dl");
    list.className = "card-stats card-metrics";
    list.setAttribute("aria-label", "Metrics");
    root.querySelector(".card-stats").after(list);
  }
  list.hidden = entries.length === 0;
  const rows = new Map([...list.children].map((row) => [row.dataset.metric, row]));
  entries.forEach(([name, number], index) => {
    let row = rows.get(name);
    if (!row) {
      row = document.createElement("div");
      row.dataset.metric = name;
      row.append(document.createElement("dt"), document.createElement("dd"));
      row.firstChild.textContent = label(name);
      row.firstChild.title = name;
    }
    rows.delete(name);
    if (list.children[index] !== row) list.insertBefore(row, list.children[index] || null);
    const text = value(number);
    if (row.lastChild.textContent !== text) row.lastChild.textContent = text;
  });
  for (const row of rows.values()) row.remove();
}
