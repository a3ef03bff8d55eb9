// Overview: what a security engineer looks at first. Nodes online and
// silent, the ingest rate (measured here from the entry counts of
// `GET /collections`, so it starts at "measuring"), flow logging, the
// completeness of the last hour from the reconciliation report, and open
// alerts. Each card needs its own permission and says so when missing.

import { can, devices, get } from "../api.js";
import { fmtAgo, fmtNum, fmtPct } from "../format.js";
import { errorNotice, h, link, pageHead, replace, table, timeEl } from "../ui.js";

/** A node is online when it reported within this many seconds. */
const ONLINE_SECS = 120;
const SEVERITY_ORDER = ["critical", "high", "medium", "low", "informational"];

function card(id, title, ...body) {
  return h("section", { class: "card", id, attrs: { "aria-labelledby": `${id}-h` } }, h("h2", { id: `${id}-h` }, title), ...body);
}

function needs(perm) {
  return h("p", null, `needs ${perm}`);
}

function totalEntries(collections) {
  let n = 0;
  for (const c of Object.values(collections || {})) for (const i of Object.values(c.instances || {})) n += i.entries || 0;
  return n;
}

function render(root, _params, { signal }) {
  const refreshed = h("span", { class: "muted small", id: "overview-refreshed" });
  root.appendChild(pageHead("Overview", refreshed));
  const cNodes = card("card-nodes", "Nodes", h("div", { class: "big" }, "…"));
  const cIngest = card("card-ingest", "Ingest", h("div", { class: "big" }, "…"));
  const cFlows = card("card-flows", "Flow logging", h("div", { class: "big" }, "…"));
  const cComplete = card("card-completeness", "Completeness, last hour", h("div", { class: "big" }, "…"));
  const cAlerts = card("card-alerts", "Open alerts", h("div", { class: "big" }, "…"));
  root.appendChild(h("div", { class: "cards" }, cNodes, cIngest, cFlows, cComplete, cAlerts));
  const silentBox = h("div");
  const alertsBox = h("div");
  root.appendChild(silentBox);
  root.appendChild(alertsBox);

  const fail = (box, title) => (e) => {
    if (e.name !== "AbortError") replace(box, h("h2", null, title), errorNotice(e));
  };

  async function nodes() {
    const l = await devices(signal, { fresh: true });
    const now = Date.now();
    const online = [];
    const silent = [];
    for (const d of l.list) {
      const seen = d.lastSeen ? Date.parse(d.lastSeen) : 0;
      (now - seen <= ONLINE_SECS * 1000 ? online : silent).push(d);
    }
    replace(
      cNodes,
      h("h2", { id: "card-nodes-h" }, "Nodes"),
      h("div", { class: `big ${silent.length ? "warn" : "ok"}`, id: "nodes-online" }, `${fmtNum(online.length)} online`),
      h("p", null, silent.length ? `${fmtNum(silent.length)} silent (no report for over ${ONLINE_SECS / 60} min)` : "none silent"),
      h("p", null, link("Devices", "/devices")),
    );
    silent.sort((a, b) => String(b.lastSeen).localeCompare(String(a.lastSeen)));
    replace(
      silentBox,
      silent.length ? h("h2", null, "Silent nodes") : null,
      silent.length
        ? table({
            columns: [
              { title: "Node", render: (d) => d.name },
              { title: "Addresses", cls: "mono small", render: (d) => (d.addresses || []).join(", ") },
              { title: "Last seen", render: (d) => h("span", null, fmtAgo(d.lastSeen), " (", timeEl(d.lastSeen), ")") },
              { title: "", render: (d) => (can("logs:read") ? link("logs", "/logs", { node: d.id, since: "24h" }) : "") },
            ],
            rows: silent.slice(0, 10),
          })
        : null,
      silent.length > 10 ? h("p", { class: "muted small" }, `and ${silent.length - 10} more: `, link("all devices", "/devices")) : null,
    );
  }

  let sample = null;
  async function ingest() {
    const v = await get("/collections", undefined, signal);
    const n = totalEntries(v.collections);
    const now = Date.now();
    let rateText = "measuring…";
    let detail = "entries per second, measured from this page";
    if (sample && now > sample.at) {
      const r = Math.max(0, ((n - sample.n) * 1000) / (now - sample.at));
      rateText = `${r < 10 ? r.toFixed(1) : fmtNum(Math.round(r))}/s`;
      detail = `entries per second over the last ${Math.round((now - sample.at) / 1000)} s`;
    }
    sample = { n, at: now };
    replace(
      cIngest,
      h("h2", { id: "card-ingest-h" }, "Ingest"),
      h("div", { class: "big", id: "ingest-rate" }, rateText),
      h("p", null, detail),
      h("p", null, `${fmtNum(n)} entries stored in ${Object.keys(v.collections || {}).length} collections`),
    );
  }

  async function flowLogging() {
    const s = await get("/api/v2/tailnet/-/settings", undefined, signal);
    const on = s.networkFlowLoggingOn === true;
    replace(
      cFlows,
      h("h2", { id: "card-flows-h" }, "Flow logging"),
      h("div", { class: `big ${on ? "ok" : "warn"}`, id: "flow-logging-state" }, on ? "on" : "off"),
      h("p", null, `flows kept ${s.flowsRetentionDays} d, logs ${s.logsRetentionDays} d, audit ${s.auditRetentionDays} d`),
      h("p", null, link("Settings", "/settings")),
    );
  }

  async function completeness() {
    const start = new Date(Date.now() - 3600e3).toISOString();
    const r = await get("/api/v2/tailnet/-/reconciliation", { start, limit: 1 }, signal);
    let judged = 0;
    let matched = 0;
    const cutoff = Date.now() - 3600e3;
    for (const p of r.pairs || []) {
      for (const b of p.recent || []) {
        const t = typeof b.start === "number" ? b.start / 1e6 : Date.parse(b.start);
        if (t + 600e3 < cutoff) continue;
        judged += b.judged || 0;
        matched += b.matched || 0;
      }
    }
    const ratio = judged ? matched / judged : null;
    const s = r.summary || {};
    replace(
      cComplete,
      h("h2", { id: "card-completeness-h" }, "Completeness, last hour"),
      h("div", { class: `big ${ratio === null ? "" : ratio >= 0.995 ? "ok" : ratio >= 0.95 ? "warn" : "bad"}`, id: "completeness" }, fmtPct(ratio)),
      h("p", null, judged ? `${fmtNum(matched)} of ${fmtNum(judged)} connection-windows matched by both ends` : "nothing judged: no node-to-node flows reconciled in the last hour"),
      h("p", null, `${fmtNum(s.findings || 0)} findings in ${fmtNum(s.incidents || 0)} incidents · `, link("Reconciliation", "/reconciliation", { since: "1h" })),
    );
  }

  async function alerts() {
    const v = await get("/api/v2/tailnet/-/alerts", { status: "open", limit: 1000 }, signal);
    const list = v.alerts || [];
    const more = !!v.nextCursor;
    const bySev = {};
    for (const a of list) bySev[a.severity] = (bySev[a.severity] || 0) + 1;
    const worst = SEVERITY_ORDER.find((s) => bySev[s]);
    replace(
      cAlerts,
      h("h2", { id: "card-alerts-h" }, "Open alerts"),
      h("div", { class: `big ${worst === "critical" || worst === "high" ? "bad" : worst ? "warn" : "ok"}`, id: "open-alerts" }, `${fmtNum(list.length)}${more ? "+" : ""}`),
      h("p", null, SEVERITY_ORDER.filter((s) => bySev[s]).map((s) => `${bySev[s]} ${s}`).join(", ") || "none open"),
      h("p", null, link("Alerts", "/alerts", { status: "open" })),
    );
    const top = [...list].sort((a, b) => SEVERITY_ORDER.indexOf(a.severity) - SEVERITY_ORDER.indexOf(b.severity)).slice(0, 8);
    replace(
      alertsBox,
      top.length ? h("h2", null, "Most severe open alerts") : null,
      top.length
        ? table({
            columns: [
              { title: "Severity", render: (a) => h("span", { class: `sev-${a.severity}` }, a.severity) },
              { title: "Alert", render: (a) => a.title },
              { title: "Summary", render: (a) => (a.evidence && a.evidence.summary) || "" },
              { title: "Window (UTC)", cls: "time", render: (a) => timeEl(a.windowStart) },
            ],
            rows: top,
          })
        : null,
    );
  }

  function refresh() {
    refreshed.textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC`;
    if (can("devices:read")) nodes().catch(fail(cNodes, "Nodes"));
    else replace(cNodes, h("h2", null, "Nodes"), needs("devices:read"));
    if (can("logs:read")) {
      ingest().catch(fail(cIngest, "Ingest"));
      completeness().catch(fail(cComplete, "Completeness, last hour"));
    } else {
      replace(cIngest, h("h2", null, "Ingest"), needs("logs:read"));
      replace(cComplete, h("h2", null, "Completeness, last hour"), needs("logs:read"));
    }
    if (can("config:read")) flowLogging().catch(fail(cFlows, "Flow logging"));
    else replace(cFlows, h("h2", null, "Flow logging"), needs("config:read"));
    if (can("alerts:read")) alerts().catch(fail(cAlerts, "Open alerts"));
    else replace(cAlerts, h("h2", null, "Open alerts"), needs("alerts:read"));
  }
  refresh();
  // The ingest rate needs a second sample soon; then everything every 15 s.
  const first = setTimeout(() => can("logs:read") && ingest().catch(() => {}), 5000);
  const timer = setInterval(refresh, 15000);
  return () => {
    clearTimeout(first);
    clearInterval(timer);
  };
}

export default { path: "/", title: "Overview", perm: "config:read", render };
