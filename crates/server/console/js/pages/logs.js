// Node logs: a query of one collection by node, time and text (as `tally
// logs query`: `GET /c/<collection>?order=newest&q=...`, searched on the
// server, newest first, a page at a time),
// and a live tail (as `tally logs tail`: `GET /c/<collection>?stream=true`)
// that keeps up without freezing the page: lines arriving are queued and
// drawn at most a few hundred per animation frame, the table holds the
// newest 2,000, and lines that would be pushed out of it before they were
// ever drawn are counted, not drawn.

import { devices, get, errorOf, request } from "../api.js";
import { fmtClock, fmtNum, fmtTime, isoTime, timeArg } from "../format.js";
import { go } from "../router.js";
import { act, badge, errorNotice, filterForm, h, jsonBlock, notice, pageHead, replace } from "../ui.js";

const PATH = "/logs";
/** Rows kept in the table. */
const MAX_ROWS = 2000;
/** Rows drawn per animation frame. */
const PER_FRAME = 150;
/** Entries per page of a query (newest first; "Older entries" reads the next). */
const PAGE = 1000;

function entryTime(e) {
  const lt = e.logtail || {};
  return lt.client_time || lt.server_time || null;
}

function entryText(e) {
  if (typeof e.text === "string") return e.text;
  const rest = { ...e };
  delete rest.logtail;
  return JSON.stringify(rest);
}

/** Builds one log row (and remembers its entry for the JSON view). */
function rowFor(e, lookup, entries) {
  const lt = e.logtail || {};
  const dev = lookup && lt.id ? lookup.byInstance.get(lt.id) : null;
  const t = entryTime(e);
  const err = lt.error && lt.error.message ? lt.error.message : null;
  const tr = h(
    "div",
    { class: `log-row${err ? " error-row" : ""}`, attrs: { role: "row" } },
    h("span", { class: "time", title: isoTime(t), attrs: { role: "cell" } }, fmtTime(t).slice(0, 10) === fmtTime(Date.now()).slice(0, 10) ? fmtClock(t) : fmtTime(t)),
    h("span", { class: "node", title: lt.id || "", attrs: { role: "cell" } }, dev ? dev.name : lt.id ? lt.id.slice(0, 8) : "–"),
    h("span", { class: "level", attrs: { role: "cell" } }, e.v !== undefined ? `v${e.v}` : ""),
    h("span", { class: "text", attrs: { role: "cell" } }, entryText(e), err ? h("span", { class: "muted" }, `  [logtail error: ${err}]`) : null),
    h("span", { class: "row-tools", attrs: { role: "cell" } }, h("button", { type: "button", class: "link json-toggle", attrs: { "aria-label": "show the entry as JSON", "aria-expanded": "false" } }, "{ }")),
  );
  entries.set(tr, e);
  return tr;
}

/** Toggles the JSON row under a log row (event delegation on the table body). */
function wireJson(tbody, entries) {
  tbody.addEventListener("click", (ev) => {
    const b = ev.target.closest ? ev.target.closest("button.json-toggle") : null;
    if (!b) return;
    const tr = b.closest(".log-row");
    const next = tr.nextElementSibling;
    if (next && next.classList.contains("json-row")) {
      next.remove();
      b.setAttribute("aria-expanded", "false");
      return;
    }
    const e = entries.get(tr);
    tr.after(h("div", { class: "json-row" }, jsonBlock(e)));
    b.setAttribute("aria-expanded", "true");
  });
}

/**
 * The list of log lines: rows of a CSS grid rather than a <table>, so that
 * rows out of view cost no layout (`content-visibility: auto`) and adding
 * lines to a long list stays cheap. ARIA roles keep it a table for
 * assistive technology.
 */
function logTable() {
  const tbody = h("div", { id: "log-rows", attrs: { role: "rowgroup" } });
  const head = h("div", { class: "log-head", attrs: { role: "row" } }, ["Time (UTC)", "Node", "Level", "Text", ""].map((c) => h("span", { attrs: { role: "columnheader" } }, c)));
  const el = h("div", { class: "log-list logs-scroll", attrs: { role: "table", "aria-label": "log lines" } }, h("div", { attrs: { role: "rowgroup" } }, head), tbody);
  return { el, tbody };
}

async function instancesFor(node, signal) {
  if (!node) return { instances: [], lookup: await devices(signal).catch(() => null) };
  const lookup = await devices(signal);
  const d = lookup.byId.get(node) || lookup.list.find((x) => x.name === node || x.hostname === node);
  if (!d) throw new Error(`no device ${JSON.stringify(node)} in this tailnet (see Devices)`);
  if (!d.instance) throw new Error(`device ${d.name} has no known instance yet: its agent has not uploaded anything`);
  return { instances: [d.instance], lookup };
}

function runQuery(out, params, signal) {
  const collection = params.get("collection") || "tailnode";
  const q = (params.get("q") || "").trim();
  const status = h("p", { class: "muted small", id: "logs-status" }, "Reading…");
  const { el, tbody } = logTable();
  const entries = new WeakMap();
  wireJson(tbody, entries);
  const older = h("button", { type: "button", class: "hidden", id: "logs-older" }, "Older entries");
  const olderOut = h("div");
  replace(out, status, el, h("div", { class: "actions" }, older), olderOut);
  let base = null;
  let lookup = null;
  let after = null;
  let shown = 0;
  let incomplete = false;
  // The server searches and answers newest first, a page at a time.
  async function page() {
    const v = await get(`/c/${encodeURIComponent(collection)}`, after ? { ...base, after } : base, signal);
    const logs = v.logs || [];
    const frag = document.createDocumentFragment();
    for (const e of logs) frag.appendChild(rowFor(e, lookup, entries));
    if (!shown && !logs.length) frag.appendChild(h("p", { class: "empty muted" }, q ? "No entries match." : "No entries in this range."));
    tbody.appendChild(frag);
    shown += logs.length;
    after = v.next || null;
    if (v.incomplete && !incomplete) {
      incomplete = true;
      out.insertBefore(notice("warn", "Part of this range is in a damaged block of the store and could not be read; the server's log has the details."), status);
    }
    const what = q ? `matching entr${shown === 1 ? "y" : "ies"}` : `entr${shown === 1 ? "y" : "ies"}`;
    replace(status, `${fmtNum(shown)} ${what} shown, newest first, in ${collection}${after ? "; older ones remain" : ""}.`);
    older.classList.toggle("hidden", !after);
  }
  older.addEventListener("click", () => act(older, page, { out: olderOut }));
  (async () => {
    base = { "time-start": timeArg(params.get("since") || "1h", "since"), "time-end": timeArg(params.get("until"), "until"), "max-count": PAGE, order: "newest", q };
    const found = await instancesFor(params.get("node"), signal);
    lookup = found.lookup;
    if (found.instances.length) base.instances = found.instances.join(",");
    await page();
  })().catch((e) => {
    if (e.name !== "AbortError") replace(out, errorNotice(e));
  });
}

function runTail(out, params, signal) {
  const collection = params.get("collection") || "tailnode";
  const q = (params.get("q") || "").trim();
  const dot = h("span", { class: "dot" });
  const state = h("span", { id: "tail-state" }, "connecting…");
  const counts = h("span", { class: "muted small", id: "tail-counts" });
  const pause = h("button", { type: "button", id: "tail-pause", attrs: { "aria-pressed": "false" } }, "Pause");
  const clearBtn = h("button", { type: "button", id: "tail-clear" }, "Clear");
  const { el, tbody } = logTable();
  const entries = new WeakMap();
  wireJson(tbody, entries);
  const msgs = h("div");
  replace(out, h("div", { class: "tail-bar" }, dot, state, counts, pause, clearBtn), msgs, el);

  let pending = [];
  let paused = false;
  let received = 0;
  let skipped = 0;
  let rows = 0;
  let frame = 0;
  let lookup = null;
  const rate = { n: 0, at: Date.now(), perSec: 0 };

  function showCounts() {
    const parts = [`${fmtNum(received)} lines`, `${rate.perSec.toFixed(rate.perSec < 10 ? 1 : 0)}/s`];
    if (paused && pending.length) parts.push(`${fmtNum(pending.length)} waiting`);
    if (skipped) parts.push(`${fmtNum(skipped)} not drawn (they came faster than the newest ${fmtNum(MAX_ROWS)} kept here; query the range to see them)`);
    counts.textContent = parts.join(" · ");
  }

  function flush() {
    frame = 0;
    if (paused || !pending.length) return;
    const take = pending.splice(0, PER_FRAME);
    const frag = document.createDocumentFragment();
    // Newest at the top.
    for (let i = take.length - 1; i >= 0; i -= 1) frag.appendChild(rowFor(take[i], lookup, entries));
    tbody.insertBefore(frag, tbody.firstChild);
    rows += take.length;
    // The count shown matches the lines drawn (not only once a second).
    showCounts();
    while (rows > MAX_ROWS && tbody.lastChild) {
      const last = tbody.lastChild;
      if (last.classList.contains("json-row")) {
        last.remove();
        continue;
      }
      last.remove();
      rows -= 1;
    }
    if (pending.length) frame = requestAnimationFrame(flush);
  }

  function push(e) {
    received += 1;
    rate.n += 1;
    pending.push(e);
    if (pending.length > MAX_ROWS * 2) {
      // More lines wait than the table keeps: the oldest would be drawn
      // only to be pushed out at once, so they are not drawn at all.
      const drop = pending.length - MAX_ROWS;
      pending.splice(0, drop);
      skipped += drop;
    }
    if (!frame && !paused) frame = requestAnimationFrame(flush);
  }

  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    pause.setAttribute("aria-pressed", String(paused));
    if (!paused && pending.length && !frame) frame = requestAnimationFrame(flush);
    showCounts();
  });
  clearBtn.addEventListener("click", () => {
    replace(tbody);
    rows = 0;
  });
  const ticker = setInterval(() => {
    const now = Date.now();
    rate.perSec = (rate.n * 1000) / Math.max(1, now - rate.at);
    rate.n = 0;
    rate.at = now;
    showCounts();
  }, 1000);

  async function connect() {
    const { instances, lookup: l } = await instancesFor(params.get("node"), signal);
    lookup = l;
    // The server keeps only the lines with the text (as a query does).
    const query = { stream: "true", q };
    if (instances.length) query.instances = instances.join(",");
    const resp = await request("GET", `/c/${encodeURIComponent(collection)}`, { query, signal });
    if (!resp.ok) throw await errorOf(resp);
    dot.className = "dot live";
    state.textContent = `live: ${collection}`;
    state.dataset.live = "1";
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let start = 0;
      let nl;
      let parsed = 0;
      while ((nl = buf.indexOf("\n", start)) >= 0) {
        const line = buf.slice(start, nl).trim();
        start = nl + 1;
        if (!line) continue;
        // A big chunk is read in slices, letting the page draw in between.
        parsed += 1;
        if (parsed % 500 === 0) await new Promise((r) => setTimeout(r, 0));
        let v;
        try {
          v = JSON.parse(line);
        } catch {
          msgs.appendChild(notice("warn", "A line of the stream could not be read as JSON and was skipped."));
          continue;
        }
        if (v.logtail) push(v);
        else if (v.incomplete) msgs.appendChild(notice("warn", "Entries are missing here: a damaged block of the store could not be read."));
      }
      buf = buf.slice(start);
    }
  }

  (async () => {
    let wait = 1000;
    while (!signal.aborted) {
      const since = Date.now();
      try {
        await connect();
        if (signal.aborted) return;
        throw new Error("the server ended the stream");
      } catch (e) {
        if (signal.aborted || e.name === "AbortError") return;
        delete state.dataset.live;
        dot.className = "dot bad";
        state.textContent = `disconnected: ${e.message}; reconnecting…`;
        if (e.status && e.status >= 400 && e.status < 500) {
          replace(msgs, errorNotice(e));
          state.textContent = "stopped";
          return;
        }
        if (Date.now() - since > 10000) wait = 1000;
        await new Promise((r) => setTimeout(r, wait));
        wait = Math.min(wait * 2, 30000);
        msgs.appendChild(notice("warn", `The live tail reconnected at ${fmtTime(Date.now())} UTC; lines sent while it was away are not shown here (query the range to see them).`));
      }
    }
  })();

  return () => {
    clearInterval(ticker);
    if (frame) cancelAnimationFrame(frame);
  };
}

function render(root, params, { signal }) {
  const tail = params.get("tail") === "1";
  const toggle = h(
    "button",
    { type: "button", id: "tail-toggle", class: tail ? "" : "primary", onclick: () => {
      const p = Object.fromEntries(params.entries());
      if (tail) delete p.tail;
      else p.tail = "1";
      go(PATH, p);
    } },
    tail ? "Stop live tail" : "Live tail",
  );
  root.appendChild(pageHead("Logs", tail ? badge("live tail", "ok") : null, toggle));
  const collSelect = [["tailnode", "tailnode"]];
  const fields = [
    { name: "collection", label: "Collection", type: "select", options: collSelect },
    { name: "node", label: "Node (name or ID)", placeholder: "all nodes", cls: "w-m" },
    { name: "q", label: "Text", placeholder: "contains…", cls: "w-l", title: "case-insensitive: the entry's text (or its JSON when it has none)" },
  ];
  if (!tail) {
    fields.push({ name: "since", label: "Since", placeholder: "1h", cls: "w-s" }, { name: "until", label: "Until", placeholder: "now", cls: "w-s" });
  }
  const form = filterForm(PATH, params, fields, { extra: tail ? { tail: "1" } : {} });
  root.appendChild(form);
  // The collections of the tailnet, once known.
  const sel = form.querySelector("#f-collection");
  const want = params.get("collection") || "tailnode";
  get("/collections", undefined, signal)
    .then((v) => {
      const names = Object.keys(v.collections || {}).sort();
      if (!names.includes(want)) names.push(want);
      replace(sel, ...names.map((n) => h("option", { value: n, selected: n === want }, n)));
    })
    .catch(() => {});
  const nodeInput = form.querySelector("#f-node");
  nodeInput.setAttribute("list", "log-nodes");
  const nodes = h("datalist", { id: "log-nodes" });
  form.appendChild(nodes);
  devices(signal)
    .then((l) => replace(nodes, ...l.list.map((d) => h("option", { value: d.name }))))
    .catch(() => {});
  const out = h("div", { id: "logs-out" });
  root.appendChild(out);
  return tail ? runTail(out, params, signal) : runQuery(out, params, signal);
}

export default { path: PATH, title: "Logs", perm: "logs:read", render };
