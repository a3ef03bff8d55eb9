// Network flows: the flow table (`GET .../logging/network`, as `tally flows
// query`, with the API's filters) and who talks to whom
// (`GET .../logging/network/graph`): nodes and edges weighted by bytes on a
// canvas, with a time slider over the API's buckets. Both ends of a
// connection report it; an edge's bytes are those of the end that reported
// more (the same traffic is not counted twice).

import { devices, get, nodeName } from "../api.js";
import { fmtBytes, fmtNum, fmtTime, protoName, timeArg } from "../format.js";
import { GraphView } from "../graph.js";
import { href, setQuiet } from "../router.js";
import { act, badge, errorNotice, filterForm, h, link, notice, pageHead, replace, timeEl } from "../ui.js";

const PATH = "/flows";
const FILTERS = ["since", "until", "node", "peer", "src", "dst", "port", "proto", "kind"];
/** Most external addresses drawn (the busiest). */
const MAX_EXTERNAL = 300;
const NICE_BUCKETS = [[10, "10s"], [30, "30s"], [60, "1m"], [300, "5m"], [900, "15m"], [1800, "30m"], [3600, "1h"], [10800, "3h"], [21600, "6h"], [86400, "1d"]];

function filterParams(params) {
  const out = {};
  for (const f of FILTERS) if (params.get(f)) out[f] = params.get(f);
  return out;
}

function apiQuery(params) {
  const q = {
    start: timeArg(params.get("since") || "1h", "since"),
    end: timeArg(params.get("until"), "until"),
  };
  for (const f of ["node", "peer", "src", "dst", "port", "proto", "kind"]) if (params.get(f)) q[f] = params.get(f);
  return q;
}

// About 12 positions of the time slider: a busy hour has an edge per pair
// and bucket, and 1-min buckets made the answer too big to send
// (tally bench console).
function autoBucket(q) {
  const span = (Date.parse(q.end || new Date().toISOString()) - Date.parse(q.start)) / 1000;
  const want = span / 12;
  for (const [s, name] of NICE_BUCKETS) if (s >= want) return name;
  return "1d";
}

function tabs(params, view) {
  const base = filterParams(params);
  return h(
    "div",
    { class: "actions", attrs: { role: "tablist", "aria-label": "view" } },
    h("a", { class: "button", href: href(PATH, { ...base, view: "graph" }), attrs: { role: "tab", "aria-selected": String(view === "graph") }, id: "view-graph" }, view === "graph" ? h("strong", null, "Graph") : "Graph"),
    h("a", { class: "button", href: href(PATH, { ...base, view: "table" }), attrs: { role: "tab", "aria-selected": String(view === "table") }, id: "view-table" }, view === "table" ? h("strong", null, "Table") : "Table"),
  );
}

// --- table -------------------------------------------------------------------

function renderTable(out, params, signal) {
  const q = apiQuery(params);
  q.limit = 500;
  const cols = ["Start (UTC)", "Node", "Kind", "Proto", "Source", "Destination", "Sent", "Received", "Packets tx/rx"];
  const tbody = h("tbody", { id: "flow-rows" });
  const count = h("p", { class: "muted small", id: "flows-count" }, "Loading…");
  const more = h("button", { type: "button", class: "hidden" }, "Older records");
  const moreOut = h("div");
  const warn = h("div");
  replace(out, warn, count, h("div", { class: "table-wrap" }, h("table", null, h("thead", null, h("tr", null, cols.map((c, i) => h("th", { class: i >= 6 ? "num" : null, attrs: { scope: "col" } }, c)))), tbody)), h("div", { class: "actions" }, more), moreOut);
  let cursor = null;
  let shown = 0;
  let lookup = null;
  const endpoint = (ep) => {
    const ip = ep.replace(/^\[/, "").replace(/\]:\d+$/, "").replace(/:\d+$/, "");
    const d = lookup && lookup.byAddress.get(ip);
    return h("span", { class: "mono small" }, ep, d ? h("span", { class: "muted" }, ` ${d.name}`) : null);
  };
  const page = async () => {
    if (!lookup) lookup = await devices(signal).catch(() => null);
    const v = await get("/api/v2/tailnet/-/logging/network", cursor ? { ...q, cursor } : q, signal);
    if (v.behind) replace(warn, notice("info", v.behind));
    if (v.errors && v.errors.length) warn.appendChild(notice("warn", `Some stored flows could not be read: ${v.errors.join("; ")}`));
    const frag = document.createDocumentFragment();
    for (const r of v.logs || []) {
      for (const [kind, list] of [["virtual", r.virtualTraffic], ["subnet", r.subnetTraffic], ["exit", r.exitTraffic], ["physical", r.physicalTraffic]]) {
        for (const e of list || []) {
          shown += 1;
          frag.appendChild(
            h(
              "tr",
              { class: "flow-row" },
              h("td", { class: "time" }, timeEl(r.start)),
              h("td", null, nodeName(lookup, r.nodeId)),
              h("td", null, kind === "virtual" ? badge(kind, "info") : kind === "exit" ? badge(kind, "warn") : badge(kind)),
              h("td", null, protoName(e.proto)),
              h("td", null, endpoint(e.src)),
              h("td", null, endpoint(e.dst)),
              h("td", { class: "num" }, fmtBytes(e.txBytes || 0)),
              h("td", { class: "num" }, fmtBytes(e.rxBytes || 0)),
              h("td", { class: "num" }, `${fmtNum(e.txPkts || 0)} / ${fmtNum(e.rxPkts || 0)}`),
            ),
          );
        }
      }
    }
    tbody.appendChild(frag);
    cursor = v.nextCursor || null;
    if (!shown) tbody.appendChild(h("tr", null, h("td", { class: "empty", colSpan: cols.length }, "No flows match. Is flow logging on (Settings)?")));
    count.textContent = `${fmtNum(shown)} traffic entries, newest records first${cursor ? " (older ones remain)" : ""}.`;
    more.classList.toggle("hidden", !cursor);
  };
  more.addEventListener("click", () => act(more, page, { out: moreOut }));
  page().catch((e) => {
    if (e.name !== "AbortError") replace(out, errorNotice(e));
  });
}

// --- graph -------------------------------------------------------------------

/** Pairs of one bucket (or several): key → {a, b, ext, reporters: Map(node → bytes), pkts}. */
function addEdges(into, edges) {
  for (const e of edges) {
    const ext = !e.dstIsNode;
    const a = e.src;
    const b = ext ? `addr:${e.dst}` : e.dst;
    const key = ext || a < b ? `${a}|${b}` : `${b}|${a}`;
    let p = into.get(key);
    if (!p) {
      p = { a: ext || a < b ? a : b, b: ext || a < b ? b : a, ext, address: ext ? e.dst : null, reporters: new Map(), pkts: 0 };
      into.set(key, p);
    }
    const bytes = (e.txBytes || 0) + (e.rxBytes || 0);
    p.reporters.set(e.src, (p.reporters.get(e.src) || 0) + bytes);
    p.pkts += (e.txPkts || 0) + (e.rxPkts || 0);
  }
  return into;
}

function pairWeight(p) {
  let w = 0;
  for (const v of p.reporters.values()) if (v > w) w = v;
  return w;
}

function renderGraph(out, params, signal) {
  let q;
  try {
    q = apiQuery(params);
  } catch (e) {
    replace(out, errorNotice(e));
    return undefined;
  }
  const bucket = params.get("bucket") || autoBucket(q);
  const showExt = params.get("ext") !== "0";
  const status = h("p", { class: "muted small", id: "graph-status" }, "Loading…");
  const canvas = h("canvas", { id: "flow-graph", tabIndex: 0, attrs: { role: "img", "aria-label": "who talks to whom: nodes and their traffic; use the list beside it, or n/p to step through nodes" } });
  const tip = h("div", { class: "graph-tip hidden", attrs: { "aria-hidden": "true" } });
  const side = h("aside", { class: "graph-side", id: "graph-side", attrs: { "aria-live": "polite" } });
  const slider = h("input", { type: "range", id: "graph-slider", min: 0, max: 0, value: 0, attrs: { "aria-label": "time window" } });
  const sliderLabel = h("span", { id: "graph-window", class: "mono small" });
  const play = h("button", { type: "button", id: "graph-play" }, "Play");
  const extBox = h("input", { type: "checkbox", id: "graph-ext", checked: showExt });
  const bucketSel = h("select", { id: "graph-bucket", attrs: { "aria-label": "bucket" } }, NICE_BUCKETS.map(([, n]) => h("option", { value: n, selected: n === bucket }, n)));
  const warn = h("div");
  replace(
    out,
    warn,
    h("div", { class: "slider" }, h("label", { for: "graph-slider" }, "Window"), slider, sliderLabel, play, h("label", { class: "field inline", for: "graph-bucket" }, h("span", null, "bucket"), bucketSel), h("label", { class: "field inline", for: "graph-ext" }, extBox, h("span", null, "addresses outside the tailnet"))),
    status,
    h("div", { class: "graph-layout" }, h("div", { class: "graph-box" }, canvas, tip), side),
    h("p", { class: "keys-help" }, "Graph keys: ", h("kbd", null, "←↑→↓"), " pan · ", h("kbd", null, "+"), " ", h("kbd", null, "-"), " zoom · ", h("kbd", null, "0"), " fit · ", h("kbd", null, "n"), " ", h("kbd", null, "p"), " next/previous node · ", h("kbd", null, "Esc"), " clear. Drag to pan, wheel to zoom, click a node."),
  );
  const base = () => ({ ...filterParams(params), view: "graph", bucket: params.get("bucket") || "", ext: showExt ? "" : "0" });
  const rerender = (extra) => {
    location.hash = href(PATH, { ...base(), ...extra });
  };
  bucketSel.addEventListener("change", () => rerender({ bucket: bucketSel.value }));
  extBox.addEventListener("change", () => rerender({ ext: extBox.checked ? "" : "0" }));

  let data = null;
  let lookup = null;
  let current = null; // pairs of the window shown
  let playing = 0;
  const view = new GraphView(canvas, {
    tooltip: tip,
    describe: (n) => `${n.label}${n.addresses ? ` (${n.addresses})` : ""}: ${fmtBytes(n.windowBytes || 0)}`,
    onSelect: (id) => {
      setQuiet(PATH, { ...base(), at: params.get("at") || "", sel: id || "" });
      params.set("sel", id || "");
      renderSide();
    },
  });

  function windowOf(i) {
    if (!data) return null;
    const n = data.buckets.length;
    if (i >= n) return { start: data.start, end: data.end, all: true };
    const s = data.buckets[i].start;
    const e = i + 1 < n ? data.buckets[i + 1].start : new Date(Date.parse(s) + data.bucketSeconds * 1000).toISOString();
    const end = new Date(Math.min(Date.parse(e), Date.parse(s) + data.bucketSeconds * 1000)).toISOString();
    return { start: s, end, all: false };
  }

  function labelOf(id) {
    if (id.startsWith("addr:")) return id.slice(5);
    return nodeName(lookup, id) === id && data.names.get(id) ? data.names.get(id) : nodeName(lookup, id);
  }

  function renderSide() {
    if (!current) return;
    const sel = params.get("sel");
    const w = windowOf(Number(slider.value));
    const timeRange = { since: w ? w.start : "", until: w ? w.end : "" };
    const pairs = [...current.values()].map((p) => ({ ...p, weight: pairWeight(p) })).sort((x, y) => y.weight - x.weight);
    if (sel && view.byId.has(sel)) {
      const mine = pairs.filter((p) => p.a === sel || p.b === sel);
      const total = mine.reduce((s, p) => s + p.weight, 0);
      const isAddr = sel.startsWith("addr:");
      replace(
        side,
        h("h2", null, labelOf(sel)),
        isAddr ? h("p", { class: "muted" }, "An address outside the tailnet") : h("p", { class: "mono small" }, ((lookup && lookup.byId.get(sel)) || {}).addresses ? lookup.byId.get(sel).addresses.join(", ") : sel),
        h("p", null, `${fmtBytes(total)} with ${mine.length} peer${mine.length === 1 ? "" : "s"} in this window`),
        h(
          "ol",
          { id: "graph-peers" },
          mine.slice(0, 50).map((p) => {
            const other = p.a === sel ? p.b : p.a;
            const flowsLink = isAddr
              ? link("flows", PATH, { view: "table", node: other, dst: p.address, ...timeRange })
              : other.startsWith("addr:")
                ? link("flows", PATH, { view: "table", node: sel, dst: other.slice(5), ...timeRange })
                : link("flows", PATH, { view: "table", node: sel, peer: other, ...timeRange });
            return h("li", null, h("button", { type: "button", class: "link", onclick: () => view.select(other) }, labelOf(other)), ` ${fmtBytes(p.weight)} · `, flowsLink);
          }),
        ),
        mine.length > 50 ? h("p", { class: "muted small" }, `and ${mine.length - 50} more`) : null,
        h("p", null, link("All flows of this node in the window", PATH, isAddr ? { view: "table", dst: sel.slice(5), ...timeRange } : { view: "table", node: sel, ...timeRange })),
      );
      return;
    }
    replace(
      side,
      h("h2", null, "Busiest pairs"),
      pairs.length
        ? h(
            "ol",
            { id: "graph-pairs" },
            pairs.slice(0, 20).map((p) =>
              h("li", null, h("button", { type: "button", class: "link", onclick: () => view.select(p.a) }, labelOf(p.a)), " ↔ ", h("button", { type: "button", class: "link", onclick: () => view.select(p.b) }, labelOf(p.b)), ` ${fmtBytes(p.weight)} · `, p.ext ? link("flows", PATH, { view: "table", node: p.a, dst: p.address, ...timeRange }) : link("flows", PATH, { view: "table", node: p.a, peer: p.b, ...timeRange })),
            ),
          )
        : h("p", { class: "muted" }, "No traffic in this window."),
    );
  }

  function showWindow(i, { quiet = true } = {}) {
    const n = data.buckets.length;
    const w = windowOf(i);
    current = new Map();
    if (i >= n) for (const b of data.buckets) addEdges(current, b.edges);
    else addEdges(current, data.buckets[i].edges);
    if (!showExt) for (const [k, p] of current) if (p.ext) current.delete(k);
    const bytesOf = new Map();
    const edges = [];
    for (const p of current.values()) {
      const weight = pairWeight(p);
      edges.push({ a: p.a, b: p.b, weight });
      bytesOf.set(p.a, (bytesOf.get(p.a) || 0) + weight);
      bytesOf.set(p.b, (bytesOf.get(p.b) || 0) + weight);
    }
    for (const node of view.nodes) node.windowBytes = bytesOf.get(node.id) || 0;
    view.setEdges(edges);
    sliderLabel.textContent = w.all ? `whole range ${fmtTime(w.start)} – ${fmtTime(w.end)} UTC` : `${fmtTime(w.start)} – ${fmtTime(w.end).slice(11)} UTC`;
    if (quiet) setQuiet(PATH, { ...base(), at: w.all ? "" : w.start, sel: params.get("sel") || "" });
    renderSide();
  }

  slider.addEventListener("input", () => showWindow(Number(slider.value)));
  play.addEventListener("click", () => {
    if (playing) {
      clearInterval(playing);
      playing = 0;
      play.textContent = "Play";
      return;
    }
    play.textContent = "Stop";
    if (Number(slider.value) >= data.buckets.length) slider.value = "0";
    playing = setInterval(() => {
      const next = Number(slider.value) + 1;
      slider.value = String(next);
      showWindow(next);
      if (next >= data.buckets.length) {
        clearInterval(playing);
        playing = 0;
        play.textContent = "Play";
      }
    }, 800);
  });

  (async () => {
    lookup = await devices(signal).catch(() => null);
    const v = await get("/api/v2/tailnet/-/logging/network/graph", { ...q, bucket }, signal);
    if (v.behind) warn.appendChild(notice("info", v.behind));
    if (v.errors && v.errors.length) warn.appendChild(notice("warn", `Some stored flows could not be read: ${v.errors.join("; ")}`));
    const names = new Map((v.nodes || []).map((n) => [n.id, n.name]));
    data = { buckets: v.buckets || [], start: v.start, end: v.end, bucketSeconds: v.bucketSeconds, names };
    // Layout over the whole range, so nodes keep their places while the slider moves.
    const all = new Map();
    for (const b of data.buckets) addEdges(all, b.edges);
    const weightOf = new Map();
    let extPairs = [];
    for (const p of all.values()) {
      const w = pairWeight(p);
      if (p.ext) extPairs.push([p, w]);
      weightOf.set(p.a, (weightOf.get(p.a) || 0) + w);
      weightOf.set(p.b, (weightOf.get(p.b) || 0) + w);
    }
    // The busiest external addresses only.
    const extWeight = new Map();
    for (const [p, w] of extPairs) extWeight.set(p.b, (extWeight.get(p.b) || 0) + w);
    const keptExt = new Set([...extWeight.entries()].sort((a, b) => b[1] - a[1]).slice(0, showExt ? MAX_EXTERNAL : 0).map(([id]) => id));
    for (const [k, p] of all) if (p.ext && !keptExt.has(p.b)) all.delete(k);
    const ids = new Set();
    for (const p of all.values()) {
      ids.add(p.a);
      ids.add(p.b);
    }
    const nodes = [...ids].map((id) => {
      const ext = id.startsWith("addr:");
      const d = !ext && lookup ? lookup.byId.get(id) : null;
      return { id, label: ext ? id.slice(5) : d ? d.name : names.get(id) || id, external: ext, weight: weightOf.get(id) || 0, addresses: d ? (d.addresses || []).join(", ") : "" };
    });
    view.setGraph(nodes, [...all.values()].map((p) => ({ a: p.a, b: p.b, weight: pairWeight(p) })));
    const nodeCount = nodes.filter((n) => !n.external).length;
    const idle = (v.nodes || []).length - nodeCount;
    const parts = [`${fmtNum(nodeCount)} nodes with traffic`, `${fmtNum(all.size)} pairs`, `${fmtNum(data.buckets.length)} buckets of ${bucket}`];
    if (idle > 0) parts.push(`${fmtNum(idle)} nodes without traffic in this range (not drawn)`);
    if (extWeight.size > keptExt.size && showExt) parts.push(`the busiest ${MAX_EXTERNAL} of ${fmtNum(extWeight.size)} outside addresses drawn`);
    status.textContent = parts.join(" · ");
    slider.max = String(data.buckets.length);
    const at = params.get("at");
    const idx = at ? data.buckets.findIndex((b) => b.start === at) : -1;
    slider.value = String(idx >= 0 ? idx : data.buckets.length);
    showWindow(Number(slider.value), { quiet: false });
    if (params.get("sel") && view.byId.has(params.get("sel"))) view.select(params.get("sel"));
    if (!data.buckets.length) warn.appendChild(notice("info", "No flows in this range. Flow logging must be on (Settings) and agents must run with --flows."));
  })().catch((e) => {
    if (e.name !== "AbortError") replace(out, errorNotice(e));
  });

  return () => {
    if (playing) clearInterval(playing);
    view.destroy();
  };
}

function render(root, params, { signal }) {
  const view = params.get("view") === "table" ? "table" : "graph";
  root.appendChild(pageHead("Network flows", tabs(params, view)));
  const fields = [
    { name: "since", label: "Since", placeholder: "1h", cls: "w-s" },
    { name: "until", label: "Until", placeholder: "now", cls: "w-s" },
    { name: "node", label: "Node", placeholder: "name or ID" },
    { name: "peer", label: "Peer", placeholder: "name or ID" },
    { name: "src", label: "Source IP/CIDR", cls: "w-m" },
    { name: "dst", label: "Destination IP/CIDR", cls: "w-m" },
    { name: "port", label: "Port", cls: "w-s" },
    { name: "proto", label: "Proto", type: "select", options: [["", "any"], ["tcp", "tcp"], ["udp", "udp"], ["icmp", "icmp"], ["icmpv6", "icmpv6"]] },
    { name: "kind", label: "Kind", type: "select", options: [["", "any"], ["virtual", "virtual"], ["subnet", "subnet"], ["exit", "exit"], ["physical", "physical"]] },
  ];
  const extra = { view };
  if (view === "graph") {
    if (params.get("bucket")) extra.bucket = params.get("bucket");
    if (params.get("ext")) extra.ext = params.get("ext");
  }
  root.appendChild(filterForm(PATH, params, fields, { extra }));
  const out = h("div", { id: "flows-out" });
  root.appendChild(out);
  if (view === "table") {
    try {
      renderTable(out, params, signal);
    } catch (e) {
      replace(out, errorNotice(e));
    }
    return undefined;
  }
  return renderGraph(out, params, signal);
}

export default { path: PATH, title: "Flows", perm: "logs:read", render };
