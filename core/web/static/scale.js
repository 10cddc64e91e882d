// The scale control of an instance's card: `instances = N` components show
// one card per instance (ID.0 ... ID.N-1, each with `instance_of`); each of
// those cards gets a number field and a Scale button that set N for the
// whole component (POST /api/components/ID/scale). A followed Control
// Center's instance (HOST/ID.K) is scaled through the pass-through route.

import {api} from "./api.js";

/** Component id (as addressed in REST) -> its instance count in the last snapshot. */
const counts = new Map();

/** Count the instances of each component in a snapshot's `components`. */
export function countInstances(components) {
  counts.clear();
  for (const cid in components) {
    if (components[cid].instance_of === undefined) continue;
    const group = groupOf(cid);
    counts.set(group, (counts.get(group) || 0) + 1);
  }
}

// "web.2" -> "web"; "host/web.2" -> "host/web" (the remote keeps its prefix).
function groupOf(cid) {
  return cid.slice(0, cid.lastIndexOf("."));
}

/**
 * Add (once) and refresh the scale control of `card` when `c` is an instance.
 * @param {object} card  the card record of cards.js (root, cid)
 * @param {object} c     the component as in the snapshot
 * @param {(text: string, kind: string) => void} feedback  the card's feedback line
 */
export function renderScale(card, c, feedback) {
  if (c.instance_of === undefined) return;
  let control = card.scale;
  if (!control) {
    control = card.scale = build(card, feedback);
    card.root.querySelector(".card-actions").after(control.root);
  }
  const count = counts.get(control.group);
  if (count !== undefined && control.input !== document.activeElement && !control.busy &&
      control.shown !== count) {
    control.shown = count;
    control.input.value = String(count);
  }
}

function build(card, feedback) {
  const group = groupOf(card.cid);
  const root = document.createElement("form");
  root.className = "card-scale";
  const label = document.createElement("label");
  label.textContent = "Instances ";
  const input = document.createElement("input");
  Object.assign(input, {type: "number", min: "0", max: "1000", step: "1", required: true,
                        className: "scale-input"});
  input.setAttribute("aria-label", `Instances of ${group}`);
  label.append(input);
  const button = document.createElement("button");
  Object.assign(button, {type: "submit", className: "btn btn-small", textContent: "Scale"});
  button.dataset.action = "scale";
  button.setAttribute("aria-label", `Scale ${group}`);
  root.append(label, button);
  const control = {root, input, button, group, shown: null, busy: false};
  root.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (control.busy) return;
    const n = Number(input.value);
    control.busy = true;
    button.disabled = true;
    feedback(`Scaling ${group} to ${input.value}…`, "busy");
    try {
      const result = await api(`/api/components/${encodeURIComponent(group)}/scale`,
        {method: "POST", json: {instances: Number.isInteger(n) ? n : input.value}});
      const now = result && result.component ? result.component.instances : n;
      feedback(`Scale accepted: ${group} now has ${now} instances.`, "ok");
    } catch (err) {
      const status = err.status ? ` (${err.status})` : "";
      feedback(`Scale failed${status}: ${err.message}`, "error");
    } finally {
      control.busy = false;
      button.disabled = false;
    }
  });
  return control;
}
