// Tailnet settings (`GET|PATCH /api/v2/tailnet/-/settings`, as `tally
// settings get|set`): flow logging and retention. Values go to the API as
// typed and the API validates them; its message is shown verbatim. Without
// `settings:write` the values are shown read-only, with no form.

import { api, can, get } from "../api.js";
import { fmtBytes, fmtNum } from "../format.js";
import { errorNotice, formRow, h, kv, link, notice, pageHead, replace, table } from "../ui.js";

const PATH = "/settings";

const DEFS = [
  { name: "networkFlowLoggingOn", label: "Network flow logging", kind: "bool", help: "Agents capture flow records only while this is on; they follow a change within about a second." },
  { name: "logsRetentionDays", label: "Logs retention (days)", kind: "int", help: "Node logs of collections without their own retention, 1 to 3650." },
  { name: "flowsRetentionDays", label: "Flow logs retention (days)", kind: "int", help: "Network flow logs, 1 to 3650." },
  { name: "auditRetentionDays", label: "Audit log retention (days)", kind: "int", help: "Configuration audit events, at least 90." },
];

function shown(d, v) {
  if (d.kind === "bool") return v ? "on" : "off";
  return v === undefined ? "–" : String(v);
}

/** A typed value as JSON: whole numbers as numbers, anything else as typed (the API says what is wrong). */
function typed(text) {
  const t = text.trim();
  return /^-?\d+$/.test(t) ? Number(t) : t;
}

function renderForm(box, current, out) {
  const inputs = new Map();
  const rows = [];
  for (const d of DEFS) {
    let input;
    if (d.kind === "bool") {
      input = h("select", { id: `s-${d.name}`, name: d.name }, h("option", { value: "true", selected: current[d.name] === true }, "on"), h("option", { value: "false", selected: current[d.name] !== true }, "off"));
    } else {
      input = h("input", { id: `s-${d.name}`, name: d.name, value: String(current[d.name] ?? ""), class: "w-s", attrs: { inputmode: "numeric" }, autocomplete: "off" });
    }
    inputs.set(d.name, [d, input]);
    rows.push(...formRow(d.label, input, d.help));
  }
  const save = h("button", { type: "submit", class: "primary", id: "settings-save" }, "Save");
  const form = h(
    "form",
    {
      id: "settings-form",
      onsubmit: async (ev) => {
        ev.preventDefault();
        const patch = {};
        for (const [name, [d, input]] of inputs) {
          const v = d.kind === "bool" ? input.value === "true" : typed(input.value);
          if (v !== current[name]) patch[name] = v;
        }
        replace(out);
        if (!Object.keys(patch).length) {
          replace(out, notice("info", "Nothing changed."));
          return;
        }
        save.disabled = true;
        try {
          const after = await api("PATCH", "/api/v2/tailnet/-/settings", { body: patch });
          Object.assign(current, after);
          const changes = Object.keys(patch).map((k) => `${k} → ${JSON.stringify(after[k])}`);
          replace(
            out,
            notice("ok", `Saved: ${changes.join(", ")}. `, link("See the audit events", "/audit", { targetType: "TAILNET", property: Object.keys(patch).length === 1 ? Object.keys(patch)[0] : "" }, { id: "settings-audit-link" })),
          );
        } catch (e) {
          replace(out, errorNotice(e));
        } finally {
          save.disabled = false;
        }
      },
    },
    h("div", { class: "form-grid" }, rows),
    h("div", { class: "actions" }, save),
  );
  replace(box, form);
}

function render(root, _params, { signal, session }) {
  root.appendChild(pageHead("Settings"));
  const out = h("div", { id: "settings-message", attrs: { "aria-live": "polite" } });
  const box = h("div", { id: "settings" }, h("p", { class: "muted" }, "Loading…"));
  const writable = can("settings:write");
  root.appendChild(out);
  root.appendChild(box);
  const colls = h("div");
  root.appendChild(h("h2", null, "Collections"));
  root.appendChild(colls);

  get("/api/v2/tailnet/-/settings", undefined, signal)
    .then((current) => {
      if (writable) {
        renderForm(box, current, out);
      } else {
        replace(
          box,
          kv(DEFS.map((d) => [d.label, h("span", { id: `v-${d.name}` }, shown(d, current[d.name]))])),
          h("p", { class: "muted small", id: "settings-readonly" }, `Read-only: your role (${session.user.role}) does not allow settings:write.`),
        );
      }
    })
    .catch((e) => {
      if (e.name !== "AbortError") replace(box, errorNotice(e));
    });

  if (can("logs:read")) {
    get("/collections", undefined, signal)
      .then((v) => {
        const rows = Object.entries(v.collections || {}).map(([name, c]) => {
          const inst = Object.values(c.instances || {});
          return { name, retention: c["retention-days"], instances: inst.length, size: inst.reduce((a, i) => a + (i.size || 0), 0), entries: inst.reduce((a, i) => a + (i.entries || 0), 0) };
        });
        replace(
          colls,
          table({
            columns: [
              { title: "Collection", render: (r) => link(r.name, "/logs", { collection: r.name }) },
              { title: "Retention (days)", cls: "num", render: (r) => (r.retention === null || r.retention === undefined ? "tailnet default" : String(r.retention)) },
              { title: "Instances", cls: "num", render: (r) => fmtNum(r.instances) },
              { title: "Entries stored", cls: "num", render: (r) => fmtNum(r.entries) },
              { title: "Bytes stored", cls: "num", render: (r) => fmtBytes(r.size) },
            ],
            rows,
          }),
        );
      })
      .catch((e) => {
        if (e.name !== "AbortError") replace(colls, errorNotice(e));
      });
  } else {
    replace(colls, h("p", { class: "muted" }, "Collections need logs:read."));
  }
}

export default { path: PATH, title: "Settings", perm: "config:read", render };
