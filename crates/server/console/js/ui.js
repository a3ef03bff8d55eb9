// DOM helpers. Text always goes in as text (textContent), never as HTML,
// so nothing a log line, a device name or an audit event holds can run.

import { go, href } from "./router.js";
import { fmtTime, isoTime } from "./format.js";

/**
 * Builds an element: `h("a", {href: "#/x", class: "y", onclick: f}, "text", child)`.
 * Props: `class`, `text`, `dataset` (object), `on<event>` (listeners),
 * `attrs` (object of attributes), booleans and other properties set directly.
 * Children: nodes, strings (as text), arrays; null/undefined/false skipped.
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = String(v);
      else if (k === "dataset") Object.assign(el.dataset, v);
      else if (k === "attrs") for (const [a, av] of Object.entries(v)) { if (av !== undefined && av !== null && av !== false) el.setAttribute(a, av === true ? "" : String(av)); }
      else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
      else if (k in el) el[k] = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
  }
  append(el, children);
  return el;
}

/** Appends children (nodes, strings, arrays) to `el`. */
export function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
  return el;
}

/** Removes every child of `el`. */
export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

/** Replaces the children of `el`. */
export function replace(el, ...children) {
  clear(el);
  return append(el, children);
}

/** A page's heading row: the title (focusable, for screen readers) and tools. */
export function pageHead(title, ...tools) {
  return h("div", { class: "page-head" }, h("h1", { tabIndex: -1, id: "page-title" }, title), h("span", { class: "spacer" }), ...tools);
}

/** A notice box; `kind`: error, ok, warn, info. Errors are announced. */
export function notice(kind, ...content) {
  return h("div", { class: `notice notice-${kind}`, attrs: { role: kind === "error" ? "alert" : "status" } }, ...content);
}

/** The server's message of an error, verbatim (with Retry-After when given). */
export function errorText(e) {
  if (!e) return "";
  let m = e.message || String(e);
  if (e.status === 429 && e.retryAfter) m += ` (try again in ${e.retryAfter} s)`;
  return m;
}

/** An error notice for `e`. */
export function errorNotice(e) {
  return notice("error", errorText(e));
}

/** A badge; `kind`: ok, warn, bad, info or none. */
export function badge(text, kind) {
  return h("span", { class: kind ? `badge badge-${kind}` : "badge" }, text);
}

/** A time cell's content: UTC time with the ISO time as tooltip. */
export function timeEl(v) {
  return h("span", { title: isoTime(v) }, fmtTime(v));
}

/** A link to a route. */
export function link(text, path, params, props = {}) {
  return h("a", { href: href(path, params), ...props }, text);
}

/**
 * A table. `columns`: [{title, cls, render(row) → node|string}], `rows`:
 * the data, `empty`: text when there is none, `rowClass(row)` optional.
 */
export function table({ columns, rows, empty = "Nothing here.", rowClass, caption, cls }) {
  const thead = h("thead", null, h("tr", null, columns.map((c) => h("th", { class: c.cls || null, attrs: { scope: "col" } }, c.title))));
  const tbody = h("tbody");
  if (!rows.length) {
    tbody.appendChild(h("tr", null, h("td", { class: "empty", colSpan: columns.length }, empty)));
  }
  for (const r of rows) {
    tbody.appendChild(h("tr", { class: rowClass ? rowClass(r) : null }, columns.map((c) => h("td", { class: c.cls || null }, c.render(r)))));
  }
  return h("div", { class: "table-wrap" }, h("table", { class: cls || null }, caption ? h("caption", { class: "hidden" }, caption) : null, thead, tbody));
}

/**
 * A filter form whose values are the page's URL query: submitting it goes
 * to `#<path>?<values>`. `fields`: [{name, label, type ("text", "select",
 * "checkbox"), options ([[value, label]]), placeholder, cls, title}].
 * The first field gets `data-filter` (the `/` key focuses it).
 */
export function filterForm(path, params, fields, { submit = "Apply", extra = {}, after } = {}) {
  const inputs = [];
  const form = h("form", { class: "filters", attrs: { role: "search" } });
  fields.forEach((f, i) => {
    let input;
    const id = `f-${f.name}`;
    if (f.type === "select") {
      input = h("select", { id, name: f.name, title: f.title || null }, f.options.map(([v, l]) => h("option", { value: v, selected: (params.get(f.name) || "") === v }, l)));
    } else if (f.type === "checkbox") {
      input = h("input", { id, type: "checkbox", name: f.name, checked: params.get(f.name) === "1" });
    } else {
      input = h("input", { id, type: f.type || "text", name: f.name, value: params.get(f.name) || "", placeholder: f.placeholder || "", class: f.cls || "w-m", title: f.title || null, autocomplete: "off", spellcheck: false });
    }
    if (i === 0) input.dataset.filter = "";
    inputs.push([f, input]);
    form.appendChild(f.type === "checkbox"
      ? h("label", { class: "field inline", for: id }, input, h("span", null, f.label))
      : h("label", { class: "field", for: id }, h("span", null, f.label), input));
  });
  const clearBtn = h("button", { type: "button", onclick: () => go(path, { ...extra }) }, "Clear");
  form.appendChild(h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, submit), clearBtn, after || null));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const out = { ...extra };
    for (const [f, input] of inputs) {
      if (f.type === "checkbox") out[f.name] = input.checked ? "1" : "";
      else out[f.name] = input.value.trim();
    }
    go(path, out);
  });
  return form;
}

/**
 * Runs `fn` for a button: the button is disabled meanwhile and an error
 * goes into `out` (verbatim) or a toast; `done(result)` on success.
 */
export async function act(button, fn, { out, done } = {}) {
  if (button) button.disabled = true;
  if (out) clear(out);
  try {
    const r = await fn();
    if (done) done(r);
    return r;
  } catch (e) {
    if (out) replace(out, errorNotice(e));
    else toast("error", errorText(e));
    return undefined;
  } finally {
    if (button && button.isConnected) button.disabled = false;
  }
}

/** A short message in the corner (errors stay 10 s, others 4 s). */
export function toast(kind, text) {
  const box = document.getElementById("toast");
  if (!box) return;
  const n = notice(kind, text);
  box.appendChild(n);
  setTimeout(() => n.remove(), kind === "error" ? 10000 : 4000);
}

/** A `<dl>` of [term, value] pairs. */
export function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.filter(Boolean).map(([k, v]) => [h("dt", null, k), h("dd", null, v)]));
}

/** Pretty JSON in a box. */
export function jsonBlock(v) {
  return h("pre", { class: "json" }, JSON.stringify(v, null, 2));
}

/** A labelled form row for `.form-grid`. */
export function formRow(label, input, hint) {
  if (!input.id) input.id = `i-${Math.random().toString(36).slice(2, 9)}`;
  return [h("label", { for: input.id }, label), input, hint ? h("div", { class: "hint" }, hint) : null];
}

/** A completeness bar (0..1, null = nothing judged). */
export function bar(ratio) {
  if (ratio === null || ratio === undefined) return h("span", { class: "muted" }, "n/a");
  const b = h("span", { class: `bar${ratio < 0.95 ? " bad" : ratio < 0.995 ? " warn" : ""}`, attrs: { "aria-hidden": "true" } }, h("i"));
  b.style.setProperty("--v", String(Math.max(0, Math.min(1, ratio))));
  return b;
}

/** A button that asks once more before it acts. */
export function confirmButton(text, confirmText, fn, props = {}) {
  let armed = false;
  let timer = 0;
  const b = h("button", { type: "button", class: "danger", ...props }, text);
  b.addEventListener("click", () => {
    if (!armed) {
      armed = true;
      b.textContent = confirmText;
      timer = setTimeout(() => {
        armed = false;
        b.textContent = text;
      }, 5000);
      return;
    }
    clearTimeout(timer);
    armed = false;
    b.textContent = text;
    fn(b);
  });
  return b;
}
