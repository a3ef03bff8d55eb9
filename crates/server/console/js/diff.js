// An audit event's old and new values as a diff: both are flattened to
// `path: value` lines (objects by key, arrays by index), then lines only
// in old are removed (-), only in new added (+), the rest unchanged.

import { h } from "./ui.js";

function flatten(v, path, out) {
  if (v !== null && typeof v === "object" && Object.keys(v).length > 0) {
    const keys = Array.isArray(v) ? v.map((_, i) => i) : Object.keys(v);
    for (const k of keys) {
      const p = Array.isArray(v) ? `${path}[${k}]` : path ? `${path}.${k}` : String(k);
      flatten(v[k], p, out);
    }
  } else {
    out.set(path || "(value)", JSON.stringify(v === undefined ? null : v));
  }
  return out;
}

/** The lines of the diff: [{op: "same"|"del"|"add", text}]. */
export function diffLines(oldV, newV) {
  const a = oldV === undefined ? new Map() : flatten(oldV, "", new Map());
  const b = newV === undefined ? new Map() : flatten(newV, "", new Map());
  const order = [...a.keys()];
  for (const k of b.keys()) if (!a.has(k)) order.push(k);
  const lines = [];
  for (const k of order) {
    const x = a.get(k);
    const y = b.get(k);
    if (x === y) lines.push({ op: "same", text: `  ${k}: ${x}` });
    else {
      if (x !== undefined) lines.push({ op: "del", text: `- ${k}: ${x}` });
      if (y !== undefined) lines.push({ op: "add", text: `+ ${k}: ${y}` });
    }
  }
  return lines;
}

/** The diff as an element (labelled for screen readers). */
export function diffView(oldV, newV) {
  const lines = diffLines(oldV, newV);
  if (!lines.length) return h("p", { class: "muted" }, "No old or new value recorded.");
  return h(
    "div",
    { class: "diff", attrs: { role: "group", "aria-label": "old and new values" } },
    lines.map((l) => h("div", { class: `diff-line ${l.op}`, attrs: { "aria-label": l.op === "add" ? "added" : l.op === "del" ? "removed" : null } }, l.text)),
  );
}
