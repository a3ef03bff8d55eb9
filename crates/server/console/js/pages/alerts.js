// Alerts (`GET /api/v2/tailnet/-/alerts`, as `tally alerts list`): newest
// first with the API's filters; acknowledge with `alerts:write` (audited).

import { api, can, devices, get, nodeName } from "../api.js";
import { fmtNum, fmtTime, timeArg } from "../format.js";
import { act, badge, errorNotice, filterForm, h, jsonBlock, kv, link, pageHead, replace, timeEl } from "../ui.js";

const PATH = "/alerts";
const SEVERITIES = ["critical", "high", "medium", "low", "informational"];

function ackCell(a, reload) {
  if (a.status === "acked") {
    const k = a.ack || {};
    return h("span", { title: k.note || "" }, badge("acked", "ok"), h("span", { class: "muted small" }, ` ${k.by && k.by.loginName ? k.by.loginName : k.by || ""} ${k.at ? fmtTime(k.at) : ""}`));
  }
  if (!can("alerts:write")) return badge("open", "warn");
  const out = h("div");
  const note = h("input", { class: "w-m", placeholder: "note (optional)", attrs: { "aria-label": `note for acknowledging ${a.title}` }, autocomplete: "off" });
  const b = h("button", { type: "submit" }, "Acknowledge");
  return h(
    "form",
    { onsubmit: (ev) => { ev.preventDefault(); act(b, () => api("POST", `/api/v2/tailnet/-/alerts/${encodeURIComponent(a.id)}/ack`, { body: note.value.trim() ? { note: note.value.trim() } : {} }), { out, done: reload }); } },
    h("div", { class: "actions" }, badge("open", "warn"), note, b),
    out,
  );
}

function render(root, params, { signal }) {
  root.appendChild(pageHead("Alerts", link("Detection rules", "/rules")));
  root.appendChild(
    filterForm(PATH, params, [
      { name: "since", label: "Since", placeholder: "24h", cls: "w-s" },
      { name: "until", label: "Until", placeholder: "now", cls: "w-s" },
      { name: "severity", label: "Severity", type: "select", options: [["", "any"], ["critical,high", "high and above"], ["critical,high,medium", "medium and above"], ...SEVERITIES.map((s) => [s, s])] },
      { name: "status", label: "Status", type: "select", options: [["", "any"], ["open", "open"], ["acked", "acknowledged"]] },
      { name: "rule", label: "Rule ID", placeholder: "tally-port-scan" },
      { name: "node", label: "Node ID", placeholder: "n…" },
    ]),
  );
  const out = h("div", { id: "alerts" }, h("p", { class: "muted" }, "Loading…"));
  root.appendChild(out);
  let query;
  try {
    query = {
      start: timeArg(params.get("since") || "24h", "since"),
      end: timeArg(params.get("until"), "until"),
      severity: params.get("severity") || "",
      status: params.get("status") || "",
      rule: params.get("rule") || "",
      node: params.get("node") || "",
      limit: 200,
    };
  } catch (e) {
    replace(out, errorNotice(e));
    return;
  }
  const load = async () => {
    const lookup = await devices(signal).catch(() => null);
    const tbody = h("tbody");
    const count = h("p", { class: "muted small" });
    const more = h("button", { type: "button", class: "hidden" }, "Older alerts");
    const moreOut = h("div");
    let cursor = null;
    let shown = 0;
    const cols = ["Window (UTC)", "Severity", "Alert", "Node", "What matched", "Status", ""];
    replace(out, count, h("div", { class: "table-wrap" }, h("table", null, h("thead", null, h("tr", null, cols.map((c) => h("th", { attrs: { scope: "col" } }, c)))), tbody)), h("div", { class: "actions" }, more), moreOut);
    const page = async () => {
      const v = await get("/api/v2/tailnet/-/alerts", cursor ? { ...query, cursor } : query, signal);
      for (const a of v.alerts || []) {
        const detail = h(
          "tr",
          { class: "expanded hidden" },
          h(
            "td",
            { colSpan: cols.length },
            kv([
              ["Rule", link(a.ruleId || a.rule_id || "–", "/rules", { q: a.ruleId || a.rule_id || "" })],
              ["Group", Object.entries(a.group || {}).map(([k, x]) => `${k}=${x}`).join(", ") || "–"],
              ["Fields", Object.entries((a.evidence && a.evidence.fields) || {}).map(([k, x]) => `${k}=${x}`).join(", ") || "–"],
              ["Matched value", a.evidence ? String(a.evidence.value) : "–"],
              ["Suppressed before", fmtNum(a.suppressedBefore || 0)],
              ["Tags", (a.tags || []).join(", ") || "–"],
              ["Flows of the window", can("logs:read") && a.node ? link("flows", "/flows", { view: "table", node: a.node, since: a.windowStart, until: a.windowEnd }) : "–"],
            ]),
            h("details", null, h("summary", { class: "small muted" }, "Alert JSON"), jsonBlock(a)),
          ),
        );
        const open = h("button", { type: "button", class: "link", attrs: { "aria-expanded": "false" } }, "Show");
        open.addEventListener("click", () => {
          const hidden = detail.classList.toggle("hidden");
          open.textContent = hidden ? "Show" : "Hide";
          open.setAttribute("aria-expanded", String(!hidden));
        });
        tbody.appendChild(
          h(
            "tr",
            { class: "alert-row" },
            h("td", { class: "time" }, timeEl(a.windowStart)),
            h("td", null, h("span", { class: `sev-${a.severity}` }, a.severity)),
            h("td", null, a.title),
            h("td", null, a.node ? nodeName(lookup, a.node) : "–"),
            h("td", null, (a.evidence && a.evidence.summary) || ""),
            h("td", null, ackCell(a, load)),
            h("td", { class: "row-tools" }, open),
          ),
          detail,
        );
      }
      shown += (v.alerts || []).length;
      cursor = v.nextCursor || null;
      if (!shown) tbody.appendChild(h("tr", null, h("td", { class: "empty", colSpan: cols.length }, "No alerts match.")));
      count.textContent = `${fmtNum(shown)} alert${shown === 1 ? "" : "s"}${cursor ? " (older ones remain)" : ""}, newest first.`;
      more.classList.toggle("hidden", !cursor);
    };
    more.addEventListener("click", () => act(more, page, { out: moreOut }));
    await page();
  };
  load().catch((e) => {
    if (e.name !== "AbortError") replace(out, errorNotice(e));
  });
}

export default { path: PATH, title: "Alerts", perm: "alerts:read", render };
