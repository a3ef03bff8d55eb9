// Streaming destinations (`/api/v2/tailnet/-/logging/{logType}/streams`,
// as `tally stream`): every destination of each log type with its
// publishing status; add, edit (PUT), test and delete with `settings:write`.
// Secrets are write-only: the API never answers them and this page never
// shows them; an edit that leaves one empty keeps the stored one.

import { api, can, get } from "../api.js";
import { fmtAgo, fmtBytes, fmtNum, fmtSpan } from "../format.js";
import { act, badge, confirmButton, errorNotice, filterForm, formRow, h, jsonBlock, notice, pageHead, replace, table } from "../ui.js";

const PATH = "/streams";
const LOG_TYPES = [
  ["configuration", "Configuration audit log"],
  ["network", "Network flow logs"],
  ["alerts", "Alerts"],
  ["findings", "Reconciliation findings"],
  ["logs", "Node logs"],
];
const DESTINATIONS = ["splunk", "cribl", "elastic", "datadog", "panther", "axiom", "webhook", "syslog", "s3", "gcs"];

function statusCell(s) {
  if (!s) return "–";
  const failing = s.lastError && s.lastError.length > 0;
  return h(
    "div",
    null,
    failing ? badge("failing", "bad") : s.numEntriesSent ? badge("delivering", "ok") : badge("idle"),
    h("div", { class: "small" }, `${fmtNum(s.numEntriesSent || 0)} entries, ${fmtBytes(s.numBytesSent || 0)} sent; ${fmtNum(s.numFailedRequests || 0)} of ${fmtNum(s.numTotalRequests || 0)} requests failed`),
    s.lagSeconds !== undefined ? h("div", { class: "small muted" }, `behind: ${fmtNum(s.lagEntries || 0)} entries, ${fmtSpan(s.lagSeconds || 0)}`) : null,
    s.lastActivity ? h("div", { class: "small muted" }, `last activity ${fmtAgo(s.lastActivity)}`) : null,
    failing ? h("div", { class: "small sev-high" }, s.lastError) : null,
    s.unencrypted ? h("div", { class: "small sev-medium" }, "sent unencrypted (http or plain syslog)") : null,
  );
}

/** Members the form has fields for (the rest go to "Other fields"). */
const FORM_KEYS = ["destinationType", "url", "user", "token", "format", "compressionFormat"];
/** Members of an answered destination that are not its configuration. */
const NOT_CONFIG = ["id", "status", "logType"];

/**
 * The form that adds a destination, or with `existing` edits it (PUT, the
 * whole configuration; a secret left empty keeps the stored one).
 */
function destForm(logType, reload, existing = null) {
  const out = h("div", { attrs: { "aria-live": "polite" } });
  const idPart = existing ? `-${existing.id}` : "";
  const type = h("select", { id: `dest-type${idPart}` }, DESTINATIONS.map((d) => h("option", { value: d, selected: !!existing && existing.destinationType === d }, d)));
  const urlIn = h("input", { id: `dest-url${idPart}`, class: "w-l", placeholder: "the destination's URL", autocomplete: "off", spellcheck: false, value: existing ? existing.url || "" : "" });
  const user = h("input", { id: `dest-user${idPart}`, class: "w-m", autocomplete: "off", value: existing ? existing.user || "" : "" });
  const token = h("input", { id: `dest-token${idPart}`, type: "password", class: "w-l", autocomplete: "new-password", placeholder: existing ? "unchanged" : "" });
  const format = h("select", { id: `dest-format${idPart}` }, h("option", { value: "" }, "Tailscale JSON"), h("option", { value: "ocsf", selected: !!existing && existing.format === "ocsf" }, "OCSF"));
  const compression = h("select", { id: `dest-compression${idPart}` }, ["none", "zstd", "gzip"].map((c) => h("option", { value: c, selected: !!existing && existing.compressionFormat === c }, c)));
  const rest = {};
  if (existing) for (const [k, v] of Object.entries(existing)) if (!FORM_KEYS.includes(k) && !NOT_CONFIG.includes(k) && v !== null && v !== undefined) rest[k] = v;
  const extra = h("textarea", { id: `dest-extra${idPart}`, rows: 4, placeholder: '{"s3Bucket": "...", "s3Region": "..."}', spellcheck: false });
  extra.value = Object.keys(rest).length ? JSON.stringify(rest, null, 2) : "";
  const save = h("button", { type: "submit", class: "primary", id: `dest-save${idPart}` }, existing ? "Save changes" : "Add destination");
  const where = `/api/v2/tailnet/-/logging/${logType}/streams`;
  return h(
    "details",
    existing ? { open: true, class: "dest-edit" } : null,
    h("summary", null, existing ? `Edit ${existing.id}` : "Add a destination"),
    h(
      "form",
      {
        onsubmit: (ev) => {
          ev.preventDefault();
          let body = { destinationType: type.value, url: urlIn.value.trim(), compressionFormat: compression.value };
          if (user.value.trim()) body.user = user.value.trim();
          if (token.value) body.token = token.value;
          if (format.value) body.format = format.value;
          if (extra.value.trim()) {
            try {
              body = { ...body, ...JSON.parse(extra.value) };
            } catch (e) {
              replace(out, notice("error", `Other fields must be a JSON object: ${e.message}`));
              return;
            }
          }
          const call = existing ? api("PUT", `${where}/${encodeURIComponent(existing.id)}`, { body }) : api("POST", where, { body });
          act(save, () => call, {
            out,
            done: () => {
              token.value = "";
              replace(out, notice("ok", existing ? "Saved." : "Added."));
              reload();
            },
          });
        },
      },
      h("div", { class: "form-grid" }, formRow("Type", type), formRow("URL", urlIn), formRow("User", user, "Elastic basic auth only"), formRow("Token", token, existing ? "write-only: leave empty to keep the stored one" : "write-only: never shown again"), formRow("Format", format), formRow("Compression", compression), formRow("Other fields (JSON)", extra, "S3/GCS, CA certificate, collections: the API's names")),
      h("div", { class: "actions" }, save),
    ),
    out,
  );
}

function section(logType, title, signal) {
  const box = h("section", { id: `streams-${logType}` }, h("h2", null, title), h("p", { class: "muted" }, "Loading…"));
  const writable = can("settings:write");
  const load = () =>
    get(`/api/v2/tailnet/-/logging/${logType}/streams`, undefined, signal)
      .then((v) => {
        const columns = [
          { title: "ID", cls: "mono small", render: (s) => s.id },
          { title: "Destination", render: (s) => h("div", null, h("strong", null, s.destinationType), h("div", { class: "mono small" }, s.url || s.s3Bucket || s.gcsBucket || "")) },
          { title: "Format", render: (s) => `${s.format || "native"}${s.compressionFormat && s.compressionFormat !== "none" ? `, ${s.compressionFormat}` : ""}` },
          { title: "Status", render: (s) => statusCell(s.status) },
          {
            title: "",
            render: (s) => {
              const o = h("div");
              const tools = [];
              const cfg = h("button", { type: "button", class: "link" }, "Config");
              cfg.addEventListener("click", () => {
                const copy = { ...s };
                delete copy.status;
                if (o.firstChild) replace(o);
                else replace(o, jsonBlock(copy));
              });
              tools.push(cfg);
              if (writable) {
                const test = h("button", { type: "button", class: "dest-test" }, "Send test event");
                test.addEventListener("click", () =>
                  act(test, () => api("POST", `/api/v2/tailnet/-/logging/${logType}/streams/${encodeURIComponent(s.id)}/test`), {
                    out: o,
                    done: (r) => replace(o, r.ok ? notice("ok", `Delivered (${fmtNum(r.requests)} request${r.requests === 1 ? "" : "s"}).`) : notice("error", `The destination refused it: ${r.error}`)),
                  }),
                );
                tools.push(test);
                const edit = h("button", { type: "button", class: "dest-edit-open" }, "Edit");
                edit.addEventListener("click", () => {
                  const copy = { ...s };
                  delete copy.status;
                  if (o.querySelector("details.dest-edit")) replace(o);
                  else replace(o, destForm(logType, load, copy));
                });
                tools.push(edit);
                tools.push(confirmButton("Delete", "Confirm delete", (b) => act(b, () => api("DELETE", `/api/v2/tailnet/-/logging/${logType}/streams/${encodeURIComponent(s.id)}`), { out: o, done: load })));
              }
              return h("div", null, h("div", { class: "actions" }, tools), o);
            },
          },
        ];
        replace(box, h("h2", null, title), table({ columns, rows: v.streams || [], empty: "Not streamed." }), writable ? destForm(logType, load) : null);
      })
      .catch((e) => {
        if (e.name !== "AbortError") replace(box, h("h2", null, title), errorNotice(e));
      });
  load();
  return box;
}

function render(root, params, { signal }) {
  root.appendChild(pageHead("Streaming"));
  root.appendChild(filterForm(PATH, params, [{ name: "type", label: "Log type", type: "select", options: [["", "all"], ...LOG_TYPES] }]));
  for (const [t, title] of LOG_TYPES) {
    if (params.get("type") && params.get("type") !== t) continue;
    root.appendChild(section(t, title, signal));
  }
}

export default { path: PATH, title: "Streaming", perm: "config:read", render };
