// Human-readable figures for the dashboard (durations, sizes, counts).

/** 3h 12m, 2d 4h, 5m 3s, 42s; "–" for null. */
export function formatUptime(seconds) {
  if (typeof seconds !== "number" || !Number.isFinite(seconds) || seconds < 0) return "–";
  const s = Math.floor(seconds);
  const days = Math.floor(s / 86400);
  const hours = Math.floor((s % 86400) / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  const secs = s % 60;
  if (days) return `${days}d ${hours}h`;
  if (hours) return `${hours}h ${minutes}m`;
  if (minutes) return `${minutes}m ${secs}s`;
  return `${secs}s`;
}

// One formatter per number of digits: toLocaleString with options builds a
// new Intl.NumberFormat on every call, which with 1,000 cards was most of the
// page's script per snapshot.
const formatters = new Map();
function formatter(digits) {
  let found = formatters.get(digits);
  if (!found) {
    found = new Intl.NumberFormat("en-US", {minimumFractionDigits: digits,
      maximumFractionDigits: digits});
    formatters.set(digits, found);
  }
  return found;
}

export function formatCount(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  return formatter(0).format(Math.round(value));
}

export function formatNumber(value, digits = 1, unit = "") {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  const text = formatter(digits).format(value);
  return unit ? `${text} ${unit}` : text;
}

/** Megabytes, switching to GB past 1024. */
export function formatMegabytes(mb) {
  if (typeof mb !== "number" || !Number.isFinite(mb)) return "–";
  if (mb >= 1024) return formatNumber(mb / 1024, 2, "GB");
  return formatNumber(mb, mb < 10 ? 2 : 1, "MB");
}

/** "12:03:04" in the viewer's time zone, from an ISO string or ms. */
export function formatClock(value) {
  const date = typeof value === "number" ? new Date(value) : new Date(value || 0);
  if (Number.isNaN(date.getTime())) return "";
  return date.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit",
    hour12: false});
}

/** Seconds left, rounded up, as "5s" / "1m 04s". */
export function formatCountdown(ms) {
  const total = Math.max(0, Math.ceil(ms / 1000));
  if (total < 60) return `${total}s`;
  return `${Math.floor(total / 60)}m ${String(total % 60).padStart(2, "0")}s`;
}
