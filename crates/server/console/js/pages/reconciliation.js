// Reconciliation (`GET .../reconciliation`, as `tally reconcile report`):
// findings per class, incidents (newest first) with links to their
// findings and to the flows of their window, completeness per node and pair
// with the last hour's trend, and the findings with their evidence.

import { devices, get, nodeName } from "../api.js";
import { fmtNum, fmtPct, fmtSpan, fmtTime, isoTime, timeArg } from "../format.js";
import { act, badge, bar, errorNotice, filterForm, h, jsonBlock, link, notice, pageHead, replace, table } from "../ui.js";

const PATH = "/reconciliation";
const CLASSES = ["count_mismatch", "missing_suspicious", "missing_agent_silent", "missing_lost_batch", "missing_opted_out", "missing_flow_logging_off", "node_unknown", "sequence_gap", "integrity"];

const iso = (ns) => (typeof ns === "number" ? new Date(ns / 1e6).toISOString() : ns);
/** The flows of a window, with a margin on each side. */
function flowsOf(node, peer, start, end) {
  const s = new Date(Date.parse(iso(start)) - 30e3).toISOString();
  const e = new Date(Date.parse(iso(end)) + 30e3).toISOString();
  const p = { view: "table", node, since: s, until: e };
  if (peer) p.peer = peer;
  return p;
}

function trendBadge(t) {
  if (t === "improving") return badge("improving", "ok");
  if (t === "worsening") return badge("worsening", "bad");
  if (t === "steady") return badge("steady");
  return badge(t || "unknown");
}

function spark(recent) {
  const s = h("span", { class: "spark", attrs: { "aria-hidden": "true" } });
  for (const b of recent || []) {
    const r = b.judged ? b.matched / b.judged : null;
    const i = h("i", { class: r === null ? "none" : r < 0.95 ? "bad" : r < 0.995 ? "warn" : "", title: `${fmtTime(iso(b.start))}: ${r === null ? "nothing judged" : fmtPct(r)}` });
    if (r !== null) i.style.setProperty("--v", String(r));
    s.appendChild(i);
  }
  return s;
}

function completenessColumns(name) {
  return [
    { title: name, render: name === "Pair" ? (p) => `${(p.names || [])[0] || p.nodes[0]} ↔ ${(p.names || [])[1] || p.nodes[1]}` : (n) => link(n.nodeName || n.node, PATH, { node: n.node }) },
    { title: "Completeness", render: (c) => (c.completeness === null || c.completeness === undefined ? h("span", { class: "muted", title: "nothing judged yet" }, "n/a") : h("span", { class: "nowrap" }, bar(c.completeness), " ", fmtPct(c.completeness))) },
    { title: "Judged", cls: "num", render: (c) => fmtNum(c.judged) },
    { title: "Matched", cls: "num", render: (c) => fmtNum(c.matched) },
    { title: "Last hour", render: (c) => spark(c.recent) },
    { title: "Trend", render: (c) => trendBadge(c.trend) },
    { title: "Last discrepancy", cls: "time", render: (c) => (c.lastDiscrepancy ? h("span", { title: isoTime(iso(c.lastDiscrepancy)) }, fmtTime(iso(c.lastDiscrepancy))) : "none") },
  ];
}

function findingRows(tbody, findings, lookup) {
  for (const f of findings) {
    const w = f.window || {};
    const detail = h("tr", { class: "expanded hidden" }, h("td", { colSpan: 8 }, h("p", null, f.detail || ""), h("h3", null, "Evidence"), jsonBlock(f.evidence || {}), h("details", null, h("summary", { class: "small muted" }, "Finding JSON"), jsonBlock(f))));
    const open = h("button", { type: "button", class: "link", attrs: { "aria-expanded": "false" } }, "Evidence");
    open.addEventListener("click", () => {
      const hidden = detail.classList.toggle("hidden");
      open.setAttribute("aria-expanded", String(!hidden));
    });
    const peerIsNode = f.peer && lookup && lookup.byId.has(f.peer);
    tbody.appendChild(
      h(
        "tr",
        { class: "finding-row" },
        h("td", { class: "time" }, h("span", { title: `${isoTime(iso(w.start))} – ${isoTime(iso(w.end))}` }, fmtTime(iso(w.start)))),
        h("td", null, f.class),
        h("td", null, h("span", { class: `sev-${f.severity}` }, f.severity)),
        h("td", null, f.nodeName || nodeName(lookup, f.node)),
        h("td", null, f.peerName || f.peer || "–"),
        h("td", null, f.detail || ""),
        h("td", { class: "nowrap" }, link("flows", "/flows", flowsOf(f.node, peerIsNode ? f.peer : null, w.start, w.end))),
        h("td", { class: "row-tools" }, open),
      ),
      detail,
    );
  }
}

function render(root, params, { signal }) {
  root.appendChild(pageHead("Reconciliation"));
  root.appendChild(
    filterForm(PATH, params, [
      { name: "since", label: "Since", placeholder: "1h", cls: "w-s" },
      { name: "until", label: "Until", placeholder: "now", cls: "w-s" },
      { name: "class", label: "Class", type: "select", options: [["", "any"], ...CLASSES.map((c) => [c, c])] },
      { name: "node", label: "Node", placeholder: "name or ID" },
      { name: "incident", label: "Incident", placeholder: "inc-…", cls: "w-m" },
    ]),
  );
  const out = h("div", { id: "reconciliation" }, h("p", { class: "muted" }, "Loading…"));
  root.appendChild(out);
  let q;
  try {
    q = { start: timeArg(params.get("since") || "1h", "since"), end: timeArg(params.get("until"), "until"), class: params.get("class") || "", node: params.get("node") || "", incident: params.get("incident") || "", limit: 200 };
  } catch (e) {
    replace(out, errorNotice(e));
    return;
  }
  (async () => {
    const lookup = await devices(signal).catch(() => null);
    const r = await get("/api/v2/tailnet/-/reconciliation", q, signal);
    const s = r.summary || {};
    const parts = [];
    parts.push(h("p", { class: "muted small" }, `${fmtTime(r.start)} – ${fmtTime(r.end)} UTC · ${fmtNum(s.findings || 0)} findings in ${fmtNum(s.incidents || 0)} incidents (findings of one node and class at most ${fmtSpan(s.incidentGapSeconds || 120)} apart)`));
    if (s.capped && s.note) parts.push(notice("warn", s.note));
    parts.push(
      h("h2", null, "Findings per class"),
      table({
        columns: [
          { title: "Class", render: (c) => link(c.class, PATH, { ...Object.fromEntries(params.entries()), class: c.class, incident: "" }) },
          { title: "Findings", cls: "num", render: (c) => fmtNum(c.findings) },
          { title: "Incidents", cls: "num", render: (c) => fmtNum(c.incidents) },
        ],
        rows: s.classes || [],
        empty: "No findings in this span: both ends of every judged connection agreed.",
      }),
    );
    if (!q.incident) {
      parts.push(
        h("h2", null, "Incidents"),
        table({
          columns: [
            { title: "Start (UTC)", cls: "time", render: (i) => h("span", { title: isoTime(iso(i.window.start)) }, fmtTime(iso(i.window.start))) },
            { title: "Duration", cls: "num", render: (i) => fmtSpan(i.durationSeconds || 0) },
            { title: "Node", render: (i) => i.nodeName || i.node },
            { title: "Class", render: (i) => i.class },
            { title: "Severity", render: (i) => h("span", { class: `sev-${i.severity}` }, i.severity) },
            { title: "Findings", cls: "num", render: (i) => fmtNum(i.findings) },
            { title: "Peers", render: (i) => (i.peers || []).map((p) => p.name || p.id).join(", ") || "–" },
            { title: "", cls: "nowrap", render: (i) => [link("findings", PATH, { ...Object.fromEntries(params.entries()), incident: i.id }), " · ", link("flows", "/flows", flowsOf(i.node, null, i.window.start, i.window.end))] },
          ],
          rows: r.incidents || [],
          rowClass: () => "incident-row",
          empty: "No incidents.",
        }),
      );
      if ((s.incidents || 0) > (s.incidentsListed || 0)) parts.push(h("p", { class: "muted small" }, `The newest ${fmtNum(s.incidentsListed)} of ${fmtNum(s.incidents)} incidents are listed.`));
    }
    parts.push(h("h2", null, "Completeness per node"), h("p", { class: "muted small" }, "Since the reconciler started; the bars of the last hour are 10-minute buckets. n/a: nothing judged."));
    parts.push(table({ columns: completenessColumns("Node"), rows: r.nodes || [], empty: "No node has node-to-node flows judged yet." }));
    parts.push(h("h2", null, "Completeness per pair"));
    parts.push(table({ columns: completenessColumns("Pair"), rows: r.pairs || [], empty: "No pair judged yet." }));
    const tbody = h("tbody", { id: "finding-rows" });
    const more = h("button", { type: "button", class: "hidden" }, "Older findings");
    const moreOut = h("div");
    parts.push(
      h("h2", null, q.incident ? `Findings of incident ${q.incident}` : "Findings"),
      h("div", { class: "table-wrap" }, h("table", null, h("thead", null, h("tr", null, ["Window (UTC)", "Class", "Severity", "Node", "Peer", "Detail", "", ""].map((c) => h("th", { attrs: { scope: "col" } }, c)))), tbody)),
      h("div", { class: "actions" }, more),
      moreOut,
    );
    findingRows(tbody, r.findings || [], lookup);
    if (!(r.findings || []).length) tbody.appendChild(h("tr", null, h("td", { class: "empty", colSpan: 8 }, "No findings.")));
    let cursor = r.nextCursor || null;
    more.classList.toggle("hidden", !cursor);
    more.addEventListener("click", () =>
      act(more, async () => {
        const v = await get("/api/v2/tailnet/-/reconciliation", { ...q, cursor }, signal);
        findingRows(tbody, v.findings || [], lookup);
        cursor = v.nextCursor || null;
        more.classList.toggle("hidden", !cursor);
      }, { out: moreOut }),
    );
    replace(out, ...parts);
  })().catch((e) => {
    if (e.name !== "AbortError") replace(out, errorNotice(e));
  });
}

export default { path: PATH, title: "Reconciliation", perm: "logs:read", render };
