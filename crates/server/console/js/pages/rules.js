// Detection rules (`/api/v2/tailnet/-/detection/rules`, as `tally rules`):
// the built-in pack and the tailnet's own; enable, disable, add, delete
// with `rules:write`; a test run over stored data (`.../rules/test`, a
// read) with `alerts:read`. A rule the server refuses shows its message
// with the line it names.

import { api, can, errorOf, get, request } from "../api.js";
import { fmtNum } from "../format.js";
import { act, badge, confirmButton, errorNotice, filterForm, h, notice, pageHead, replace, table } from "../ui.js";

const PATH = "/rules";

async function testRule(yaml, since, out, button) {
  button.disabled = true;
  const progress = h("p", { class: "muted small" }, "Testing…");
  const found = h("tbody");
  replace(out, progress, h("div", { class: "table-wrap" }, h("table", null, h("thead", null, h("tr", null, ["Window start", "Severity", "Alert", "What matched"].map((c) => h("th", null, c)))), found)));
  try {
    const resp = await request("POST", "/api/v2/tailnet/-/detection/rules/test", { body: { yaml, since } });
    if (!resp.ok) throw await errorOf(resp);
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    let n = 0;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let start = 0;
      let i;
      while ((i = buf.indexOf("\n", start)) >= 0) {
        const line = buf.slice(start, i).trim();
        start = i + 1;
        if (!line) continue;
        const v = JSON.parse(line);
        if (v.alert) {
          n += 1;
          const a = v.alert;
          found.appendChild(h("tr", null, h("td", { class: "time" }, a.windowStart || ""), h("td", null, a.severity), h("td", null, a.title), h("td", null, (a.evidence && a.evidence.summary) || "")));
        } else if (v.progress) {
          progress.textContent = `Testing… ${JSON.stringify(v.progress)}`;
        } else if (v.done) {
          progress.textContent = `Done: ${fmtNum(v.done.records)} records read since ${v.done.since}, ${fmtNum(v.done.alerts)} alerts would have been raised (nothing stored).`;
        } else if (v.error) {
          throw new Error(v.error);
        }
      }
      buf = buf.slice(start);
    }
    if (!n) found.appendChild(h("tr", null, h("td", { class: "empty", colSpan: 4 }, "No alert.")));
  } catch (e) {
    replace(out, errorNotice(e));
  } finally {
    button.disabled = false;
  }
}

function addForm(reload) {
  const out = h("div", { attrs: { "aria-live": "polite" } });
  const yaml = h("textarea", { id: "rule-yaml", rows: 14, spellcheck: false, placeholder: "title: ...\nid: my-rule\nlogsource:\n    product: tally\n    service: flows\ndetection:\n    selection:\n        dst_port: 3389\n    condition: selection\nlevel: medium", attrs: { "aria-label": "Sigma rule (YAML)" } });
  const since = h("input", { class: "w-s", value: "7d", attrs: { "aria-label": "test over the last" } });
  const test = h("button", { type: "button" }, "Test over the last");
  const testOut = h("div");
  test.addEventListener("click", () => testRule(yaml.value, since.value.trim(), testOut, test));
  const add = h("button", { type: "submit", class: "primary" }, "Add rule");
  const parts = [yaml, h("div", { class: "actions" }, can("rules:write") ? add : null, test, since)];
  return h(
    "details",
    null,
    h("summary", null, can("rules:write") ? "Add or test a rule" : "Test a rule"),
    h(
      "form",
      {
        onsubmit: (ev) => {
          ev.preventDefault();
          act(add, () => api("POST", "/api/v2/tailnet/-/detection/rules", { body: { yaml: yaml.value, enabled: true } }), {
            out,
            done: (r) => {
              replace(out, notice("ok", `Added ${r.id}.`));
              reload();
            },
          });
        },
      },
      parts,
    ),
    out,
    testOut,
  );
}

function render(root, params, { signal }) {
  root.appendChild(pageHead("Detection rules"));
  root.appendChild(
    filterForm(PATH, params, [
      { name: "q", label: "ID or title", cls: "w-l" },
      { name: "service", label: "Reads", type: "select", options: [["", "any"], ["flows", "flows"], ["logs", "logs"], ["audit", "audit"], ["reconciliation", "reconciliation"]] },
      { name: "state", label: "State", type: "select", options: [["", "any"], ["enabled", "enabled"], ["disabled", "disabled"]] },
    ]),
  );
  const writable = can("rules:write");
  const out = h("div", { id: "rules" }, h("p", { class: "muted" }, "Loading…"));
  const q = (params.get("q") || "").toLowerCase();
  const load = () =>
    get("/api/v2/tailnet/-/detection/rules", undefined, signal)
      .then((v) => {
        const rows = (v.rules || []).filter(
          (r) =>
            (!q || `${r.id} ${r.title || ""}`.toLowerCase().includes(q)) &&
            (!params.get("service") || (r.services || []).includes(params.get("service"))) &&
            (!params.get("state") || (params.get("state") === "enabled") === !!r.enabled),
        );
        const columns = [
          { title: "ID", cls: "mono small", render: (r) => r.id },
          { title: "Title", render: (r) => (r.error ? h("span", null, notice("error", r.error)) : r.title || "–") },
          { title: "Level", render: (r) => h("span", { class: `sev-${r.level}` }, r.level || "–") },
          { title: "Reads", render: (r) => (r.services || []).join(", ") },
          { title: "Kind", render: (r) => [r.builtin ? badge("built-in") : badge("own", "info"), r.correlation ? badge("correlation") : null] },
          { title: "State", render: (r) => (r.enabled ? badge("enabled", "ok") : badge("disabled", "warn")) },
          {
            title: "",
            render: (r) => {
              const o = h("div");
              const yamlBox = h("div");
              const view = h("button", { type: "button", class: "link" }, "YAML");
              view.addEventListener("click", () => {
                if (yamlBox.firstChild) {
                  replace(yamlBox);
                  return;
                }
                get(`/api/v2/tailnet/-/detection/rules/${encodeURIComponent(r.id)}`, undefined, signal)
                  .then((full) => replace(yamlBox, h("pre", { class: "json" }, full.yaml || "")))
                  .catch((e) => replace(yamlBox, errorNotice(e)));
              });
              const tools = [view];
              if (writable) {
                const t = h("button", { type: "button" }, r.enabled ? "Disable" : "Enable");
                t.addEventListener("click", () => act(t, () => api("PUT", `/api/v2/tailnet/-/detection/rules/${encodeURIComponent(r.id)}`, { body: { enabled: !r.enabled } }), { out: o, done: load }));
                tools.push(t);
                if (!r.builtin) tools.push(confirmButton("Delete", "Confirm delete", (b) => act(b, () => api("DELETE", `/api/v2/tailnet/-/detection/rules/${encodeURIComponent(r.id)}`), { out: o, done: load })));
              }
              return h("div", null, h("div", { class: "actions" }, tools), o, yamlBox);
            },
          },
        ];
        replace(out, h("p", { class: "muted small" }, `${rows.length} of ${(v.rules || []).length} rules`), table({ columns, rows, empty: "No rule matches." }));
      })
      .catch((e) => {
        if (e.name !== "AbortError") replace(out, errorNotice(e));
      });
  root.appendChild(addForm(load));
  root.appendChild(out);
  load();
}

export default { path: PATH, title: "Rules", perm: "alerts:read", render };
