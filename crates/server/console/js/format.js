// Formatting and parsing of times, durations, sizes and numbers. Times are
// shown in UTC (the server's and the CLI's), with the full RFC 3339 time
// in the tooltip.

const UNITS = { s: 1, m: 60, h: 3600, d: 86400, w: 604800 };

/** Parses a duration such as "90s", "15m", "1h", "7d" or "1h30m" into seconds, or null. */
export function parseDuration(text) {
  const t = String(text || "").trim();
  if (!t) return null;
  const re = /(\d+(?:\.\d+)?)\s*([smhdw])/gy;
  let total = 0;
  let m;
  let used = 0;
  while ((m = re.exec(t)) !== null) {
    total += parseFloat(m[1]) * UNITS[m[2]];
    used = re.lastIndex;
  }
  return used === t.length && used > 0 ? total : null;
}

/**
 * A "since"/"until" filter value (a duration ago, or an RFC 3339 time) as an
 * RFC 3339 time, or null when empty. Throws an Error with a clear message
 * when it is neither.
 */
export function timeArg(text, name = "time") {
  const t = String(text || "").trim();
  if (!t) return null;
  const secs = parseDuration(t);
  if (secs !== null) return new Date(Date.now() - secs * 1000).toISOString();
  const d = new Date(t);
  if (/^\d{4}-\d{2}-\d{2}/.test(t) && !Number.isNaN(d.getTime())) return d.toISOString();
  throw new Error(`${name} must be a duration ago (30s, 15m, 1h, 7d) or an RFC 3339 time, got ${JSON.stringify(t)}`);
}

function toDate(v) {
  if (v === null || v === undefined || v === "") return null;
  if (v instanceof Date) return v;
  if (typeof v === "number") {
    // Unix nanoseconds (the reconciler's times) or milliseconds.
    return new Date(v > 1e14 ? v / 1e6 : v);
  }
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? null : d;
}

const pad = (n, w = 2) => String(n).padStart(w, "0");

/** "2026-01-02 15:04:05" in UTC, or "–". */
export function fmtTime(v) {
  const d = toDate(v);
  if (!d) return "–";
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
}

/** "15:04:05.123" in UTC (log lines of today). */
export function fmtClock(v) {
  const d = toDate(v);
  if (!d) return "–";
  return `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}.${pad(d.getUTCMilliseconds(), 3)}`;
}

/** The full ISO time (tooltips). */
export function isoTime(v) {
  const d = toDate(v);
  return d ? d.toISOString() : "";
}

/** "3 min ago", "2 h ago", "in 5 d". */
export function fmtAgo(v, now = Date.now()) {
  const d = toDate(v);
  if (!d) return "never";
  const s = Math.round((now - d.getTime()) / 1000);
  const a = Math.abs(s);
  const txt = a < 60 ? `${a} s` : a < 3600 ? `${Math.floor(a / 60)} min` : a < 86400 ? `${Math.floor(a / 3600)} h` : `${Math.floor(a / 86400)} d`;
  return s >= 0 ? `${txt} ago` : `in ${txt}`;
}

/** A span in seconds as "1m 10s", "2h 5m", "3d 4h". */
export function fmtSpan(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

/** Bytes as "1.2 MB" (powers of 1000, as the CLI). */
export function fmtBytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  const u = ["B", "kB", "MB", "GB", "TB", "PB"];
  let v = Number(n);
  let i = 0;
  while (v >= 1000 && i < u.length - 1) {
    v /= 1000;
    i += 1;
  }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${u[i]}`;
}

/** A count with thousands separators. */
export function fmtNum(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return Number(n).toLocaleString("en-US");
}

/** A ratio 0..1 as "99.5 %", or "n/a" when unknown. */
export function fmtPct(r) {
  if (r === null || r === undefined || Number.isNaN(r)) return "n/a";
  const p = r * 100;
  return `${p >= 99.95 && p < 100 ? "99.9" : p.toFixed(p === 100 || p === 0 ? 0 : 1)} %`;
}

/** The IP protocol's name for its number. */
export function protoName(p) {
  return { 1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6" }[p] || (p === undefined ? "–" : String(p));
}
