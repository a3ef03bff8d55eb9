// Streaming destinations (`/api/v2/tailnet/-/logging/{logType}/streams`,
// as `tally stream`): every destination of each log type with its
// publishing status; add, test and delete with `settings:write`. Secrets
// are write-only: the API never answers them and this page never shows them.

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

function addForm(logType, reload) {
  const out = h("div", { attrs: { "aria-live": "polite" } });
  const type = h("select", null, DESTINATIONS.map((d) => h("option", { value: d }, d)));
  const urlIn = h("input", { class: "w-l", placeholder: "the destination's URL", autocomplete: "off", spellcheck: false });
  const user = h("input", { class: "w-m", autocomplete: "off" });
  const token = h("input", { type: "password", class: "w-l", autocomplete: "new-password" });
  const format = h("select", null, h("option", { value: "" }, "Tailscale JSON"), h("option", { value: "ocsf" }, "OCSF"));
  const compression = h("select", null, ["none", "zstd", "gzip"].map((c) => h("option", { value: c }, c)));
  const extra = h("textarea", { rows: 4, placeholder: '{"s3Bucket": "...", "s3Region": "..."}', spellcheck: false });
  const add = h("button", { type: "submit", class: "primary" }, "Add destination");
  return h(
    "details",
    null,
    h("summary", null, "Add a destination"),
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
          act(add, () => api("POST", `/api/v2/tailnet/-/logging/${logType}/streams`, { body }), {
            out,
            done: () => {
              token.value = "";
              replace(out, notice("ok", "Added."));
              reload();
            },
          });
        },
      },
      h("div", { class: "form-grid" }, formRow("Type", type), formRow("URL", urlIn), formRow("User", user, "Elastic basic auth only"), formRow("Token", token, "write-only: never shown again"), formRow("Format", format), formRow("Compression", compression), formRow("Other fields (JSON)", extra, "S3/GCS, CA certificate, collections: the API's names")),
      h("div", { class: "actions" }, add),
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
                const test = h("button", { type: "button" }, "Send test event");
                test.addEventListener("click", () =>
                  act(test, () => api("POST", `/api/v2/tailnet/-/logging/${logType}/streams/${encodeURIComponent(s.id)}/test`), {
                    out: o,
                    done: (r) => replace(o, r.ok ? notice("ok", `Delivered (${fmtNum(r.requests)} request${r.requests === 1 ? "" : "s"}).`) : notice("error", `The destination refused it: ${r.error}`)),
                  }),
                );
                tools.push(test);
                tools.push(confirmButton("Delete", "Confirm delete", (b) => act(b, () => api("DELETE", `/api/v2/tailnet/-/logging/${logType}/streams/${encodeURIComponent(s.id)}`), { out: o, done: load })));
              }
              return h("div", null, h("div", { class: "actions" }, tools), o);
            },
          },
        ];
        replace(box, h("h2", null, title), table({ columns, rows: v.streams || [], empty: "Not streamed." }), writable ? addForm(logType, load) : null);
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
