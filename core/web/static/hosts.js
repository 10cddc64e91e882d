// The remotes this Control Center follows (the snapshot's "hosts"): one line
// per host with its connection state, above the cards. The cards of a remote
// come in the snapshot after this machine's, host by host, so they are
// already grouped; each card's id line shows its "HOST/ID".

export function renderHosts(container, hosts) {
  const names = hosts && typeof hosts === "object" ? Object.keys(hosts) : [];
  // Written only when they change (the same value written again still
  // invalidates style).
  if (container.hidden !== (names.length === 0)) container.hidden = names.length === 0;
  const rows = new Map([...container.children].map((row) => [row.dataset.host, row]));
  for (const [name, row] of rows) {
    if (!names.includes(name)) row.remove();
  }
  names.forEach((name, index) => {
    const host = hosts[name] || {};
    let row = rows.get(name);
    if (!row) {
      row = document.createElement("li");
      row.className = "host";
      row.dataset.host = name;
      row.append(document.createElement("strong"), document.createElement("span"));
    }
    if (container.children[index] !== row) {
      container.insertBefore(row, container.children[index] || null);
    }
    const state = String(host.state || "unknown");
    if (row.dataset.state !== state) row.dataset.state = state;
    if (row.firstChild.textContent !== name) row.firstChild.textContent = name;
    const text = ` ${state}${host.error ? ` – ${host.error}` : ""}`;
    if (row.lastChild.textContent !== text) row.lastChild.textContent = text;
  });
}
