// The configuration audit log (`GET /api/v2/tailnet/-/logging/configuration`,
// as `tally audit list`): filters in the URL, newest first, each event's
// old and new values as a diff, and, when asked (it reads every event), the
// hash chain's verdict (`tally audit verify`) with its head.

import { can, get } from "../api.js";
import { diffView } from "../diff.js";
import { fmtNum, timeArg } from "../format.js";
import { act, badge, errorNotice, filterForm, h, jsonBlock, kv, notice, pageHead, replace, timeEl } from "../ui.js";

const PATH = "/audit";
const ACTIONS = ["CREATE", "UPDATE", "DELETE", "ENABLE", "DISABLE", "REVOKE", "LOGIN", "LOGOUT"];
const TARGETS = ["TAILNET", "USER", "API_KEY", "AUTH_KEY", "NODE", "COLLECTION", "AUDIT_LOG", "CONSUMER", "DETECTION_RULE", "ALERT"];

function datalist(id, values) {
  return h("datalist", { id }, values.map((v) => h("option", { value: v })));
}

function verdict(v) {
  const head = v.head || "";
  return h(
    "div",
    { class: `notice ${v.intact ? "notice-ok" : "notice-error"}`, id: "audit-verdict", attrs: { role: v.intact ? "status" : "alert" } },
    h("strong", null, v.intact ? "Hash chain intact" : "Hash chain BROKEN"),
    ` · ${fmtNum(v.events)} events checked · head `,
    h("code", { title: head, id: "audit-head" }, head.slice(0, 16) + (head.length > 16 ? "…" : "")),
    v.anchorSeq ? ` · anchored after event ${v.anchorSeq} (older events removed by retention)` : "",
    v.brokenAt ? h("div", null, `First broken link: event ${v.brokenAt.seq}: ${v.brokenAt.problem}`) : null,
    v.message && !v.intact ? h("div", { class: "small" }, v.message) : null,
  );
}

function eventRows(e, columns) {
  const open = h("button", { type: "button", class: "link", attrs: { "aria-expanded": "false" } }, "Show");
  const detail = h(
    "tr",
    { class: "expanded hidden" },
    h(
      "td",
      { colSpan: columns },
      e.error ? notice("error", `Refused: ${e.error}`) : null,
      e.actionDetails ? h("p", null, e.actionDetails) : null,
      diffView(e.old, e.new),
      kv([
        ["Event group", h("code", null, e.eventGroupID || "–")],
        ["Actor", `${e.actor ? `${e.actor.loginName} (${e.actor.type}, ${e.actor.id})` : "–"}`],
        ["Address", e.remoteAddr || "–"],
        ["Target", `${e.target ? `${e.target.type} ${e.target.id}${e.target.name ? ` (${e.target.name})` : ""}` : "–"}`],
      ]),
      h("details", null, h("summary", { class: "small muted" }, "Event JSON"), jsonBlock(e)),
    ),
  );
  open.addEventListener("click", () => {
    const hidden = detail.classList.toggle("hidden");
    open.textContent = hidden ? "Show" : "Hide";
    open.setAttribute("aria-expanded", String(!hidden));
  });
  const t = e.target || {};
  const row = h(
    "tr",
    { class: `audit-event${e.error ? " error-row" : ""}`, dataset: { action: e.action || "", actor: (e.actor && e.actor.loginName) || "" } },
    h("td", { class: "time" }, timeEl(e.eventTime)),
    h("td", { class: "actor" }, (e.actor && e.actor.loginName) || "–", " ", badge(e.origin || "?")),
    h("td", { class: "action" }, e.action || "–"),
    h("td", null, t.type || "–"),
    h("td", { class: "mono small" }, t.name ? `${t.name} ` : "", h("span", { class: "muted" }, t.id || "")),
    h("td", null, t.property || ""),
    h("td", null, e.error ? badge("refused", "bad") : badge("ok", "ok")),
    h("td", { class: "row-tools" }, open),
  );
  return [row, detail];
}

function render(root, params, { signal }) {
  const filters = ["actor", "action", "targetType", "targetId", "property", "q", "since", "until"];
  root.appendChild(pageHead("Configuration audit log"));
  // Verifying reads and hashes every event of the log (seconds for a
  // million), so it runs when asked, not on every visit.
  const verdictBox = h("div", { id: "audit-verify-box" });
  const verifyBtn = h("button", { type: "button", id: "audit-verify" }, "Verify the hash chain");
  const verifyOut = h("span", { class: "muted small" }, " reads and hashes every event, as tally audit verify does");
  replace(verdictBox, h("div", { class: "actions" }, verifyBtn, verifyOut));
  verifyBtn.addEventListener("click", () => {
    replace(verifyOut, " Checking the hash chain…");
    act(verifyBtn, async () => {
      const v = await get("/api/v2/tailnet/-/logging/configuration/verify", undefined, signal);
      replace(verdictBox, verdict(v), h("div", { class: "actions" }, verifyBtn));
      verifyBtn.textContent = "Verify again";
    }, { out: verifyOut });
  });
  root.appendChild(verdictBox);
  root.appendChild(
    filterForm(PATH, params, [
      { name: "actor", label: "Actor (login)", placeholder: "alice@example.com", cls: "w-l", attrs: {} },
      { name: "action", label: "Action", placeholder: "UPDATE" },
      { name: "targetType", label: "Target type", placeholder: "NODE" },
      { name: "targetId", label: "Target ID" },
      { name: "property", label: "Property", placeholder: "networkFlowLoggingOn" },
      { name: "q", label: "Text", placeholder: "tag:prod" },
      { name: "since", label: "Since", placeholder: "7d", cls: "w-s" },
      { name: "until", label: "Until", placeholder: "now", cls: "w-s" },
    ]),
  );
  const form = root.querySelector("form.filters");
  form.querySelector("#f-action").setAttribute("list", "audit-actions");
  form.querySelector("#f-targetType").setAttribute("list", "audit-targets");
  form.appendChild(datalist("audit-actions", ACTIONS));
  form.appendChild(datalist("audit-targets", TARGETS));
  if (can("config:read")) {
    form.querySelector("#f-actor").setAttribute("list", "audit-actors");
    const actors = datalist("audit-actors", []);
    form.appendChild(actors);
    get("/api/v2/tailnet/-/users", undefined, signal)
      .then((v) => replace(actors, ...(v.users || []).map((u) => h("option", { value: u.loginName }))))
      .catch(() => {});
  }
  const out = h("div", { id: "audit-results" });
  root.appendChild(out);


  let query;
  try {
    query = { limit: 100 };
    for (const f of filters) {
      const v = (params.get(f) || "").trim();
      if (!v) continue;
      if (f === "since") query.start = timeArg(v, "since");
      else if (f === "until") query.end = timeArg(v, "until");
      else query[f] = v;
    }
  } catch (e) {
    replace(out, errorNotice(e));
    return;
  }
  const cols = ["Time (UTC)", "Actor", "Action", "Target", "Target name / ID", "Property", "Result", ""];
  const tbody = h("tbody", { id: "audit-rows" });
  const count = h("p", { class: "muted small", id: "audit-count" }, "Loading…");
  const more = h("button", { type: "button", class: "hidden", id: "audit-more" }, "Older events");
  const moreOut = h("div");
  let shown = 0;
  let before = null;
  const tableEl = h("div", { class: "table-wrap" }, h("table", null, h("thead", null, h("tr", null, cols.map((c) => h("th", { attrs: { scope: "col" } }, c)))), tbody));
  replace(out, count, tableEl, h("div", { class: "actions" }, more), moreOut);

  async function page() {
    const v = await get("/api/v2/tailnet/-/logging/configuration", before ? { ...query, before } : query, signal);
    const logs = v.logs || [];
    for (const e of logs) for (const r of eventRows(e, cols.length)) tbody.appendChild(r);
    shown += logs.length;
    before = v.nextBefore || null;
    if (!shown) tbody.appendChild(h("tr", null, h("td", { class: "empty", colSpan: cols.length }, "No events match these filters.")));
    count.textContent = `${fmtNum(shown)} event${shown === 1 ? "" : "s"}${before ? " (older ones remain)" : ""}, newest first.`;
    more.classList.toggle("hidden", !before);
  }
  more.addEventListener("click", () => act(more, page, { out: moreOut }));
  page().catch((e) => {
    if (e.name !== "AbortError") replace(out, errorNotice(e));
  });
}

export default { path: PATH, title: "Audit log", perm: "audit:read", render };
