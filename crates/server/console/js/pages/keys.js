// API and auth keys (`/api/v2/tailnet/-/keys`, as `tally keys`): create
// (the secret is shown once, here, and kept nowhere) and revoke, with
// `keys:write`.

import { api, can, get } from "../api.js";
import { parseDuration } from "../format.js";
import { act, badge, confirmButton, errorNotice, filterForm, formRow, h, notice, pageHead, replace, table, timeEl } from "../ui.js";

const PATH = "/keys";

function createForm(reload) {
  const out = h("div", { attrs: { "aria-live": "polite" } });
  const type = h("select", { id: "key-type" }, h("option", { value: "auth" }, "auth key (agents register with it)"), h("option", { value: "api" }, "API key (CLI, API)"));
  const description = h("input", { id: "key-description", class: "w-l", autocomplete: "off" });
  const expiry = h("input", { id: "key-expiry", class: "w-s", placeholder: "90d", autocomplete: "off" });
  const reusable = h("input", { type: "checkbox", id: "key-reusable" });
  const ephemeral = h("input", { type: "checkbox", id: "key-ephemeral" });
  const preauth = h("input", { type: "checkbox", id: "key-preauthorized" });
  const tags = h("input", { id: "key-tags", class: "w-l", placeholder: "tag:server", autocomplete: "off" });
  const authOnly = h("fieldset", null, h("legend", null, "Devices registered with it"), h("div", { class: "form-grid" }, formRow("Reusable", reusable), formRow("Ephemeral", ephemeral), formRow("Preauthorized", preauth), formRow("Tags", tags)));
  type.addEventListener("change", () => authOnly.classList.toggle("hidden", type.value !== "auth"));
  const go = h("button", { type: "submit", class: "primary" }, "Create key");
  return h(
    "details",
    null,
    h("summary", null, "Create a key"),
    h(
      "form",
      {
        onsubmit: (ev) => {
          ev.preventDefault();
          const body = { keyType: type.value };
          if (description.value.trim()) body.description = description.value.trim();
          if (expiry.value.trim()) {
            const s = parseDuration(expiry.value);
            if (s === null) {
              replace(out, notice("error", `expiry must be a duration such as 90d or 12h, got ${JSON.stringify(expiry.value.trim())}`));
              return;
            }
            body.expirySeconds = Math.round(s);
          }
          if (type.value === "auth") {
            body.capabilities = { devices: { create: { reusable: reusable.checked, ephemeral: ephemeral.checked, preauthorized: preauth.checked, tags: tags.value.split(/[\s,]+/).filter(Boolean) } } };
          }
          act(go, () => api("POST", "/api/v2/tailnet/-/keys", { body }), {
            out,
            done: (k) => {
              replace(out, notice("warn", h("strong", null, "Copy this secret now: it is not shown again."), h("div", { class: "secret", id: "new-key-secret" }, k.key || "")));
              reload();
            },
          });
        },
      },
      h("div", { class: "form-grid" }, formRow("Type", type), formRow("Description", description), formRow("Expires in", expiry, "a duration (90d, 12h); empty: never")),
      authOnly,
      h("div", { class: "actions" }, go),
    ),
    out,
  );
}

function render(root, params, { signal }) {
  root.appendChild(pageHead("Keys"));
  root.appendChild(
    filterForm(PATH, params, [
      { name: "type", label: "Type", type: "select", options: [["", "any"], ["api", "API"], ["auth", "auth"]] },
      { name: "valid", label: "Usable only", type: "checkbox" },
    ]),
  );
  const writable = can("keys:write");
  const out = h("div", { id: "keys" }, h("p", { class: "muted" }, "Loading…"));
  const load = () =>
    Promise.all([get("/api/v2/tailnet/-/keys", undefined, signal), get("/api/v2/tailnet/-/users", undefined, signal).catch(() => ({ users: [] }))])
      .then(([v, u]) => {
        const login = new Map((u.users || []).map((x) => [x.id, x.loginName]));
        const rows = (v.keys || []).filter((k) => (!params.get("type") || k.keyType === params.get("type")) && (params.get("valid") !== "1" || !k.invalid));
        const columns = [
          { title: "ID", cls: "mono small", render: (k) => k.id },
          { title: "Type", render: (k) => k.keyType },
          { title: "Description", render: (k) => k.description || "–" },
          { title: "State", render: (k) => (k.revoked ? badge("revoked", "bad") : k.invalid ? badge("expired", "warn") : badge("usable", "ok")) },
          { title: "Created", cls: "time", render: (k) => timeEl(k.created) },
          { title: "Expires", cls: "time", render: (k) => (k.expires ? timeEl(k.expires) : "never") },
          { title: "Acts for", render: (k) => h("span", { title: k.userId }, login.get(k.userId) || k.userId) },
          { title: "Devices", render: (k) => { const c = k.capabilities && k.capabilities.devices && k.capabilities.devices.create; return c ? [c.reusable ? "reusable" : "one-off", c.ephemeral ? "ephemeral" : "", c.preauthorized ? "preauthorized" : "", ...(c.tags || [])].filter(Boolean).join(", ") : ""; } },
        ];
        if (writable) {
          columns.push({
            title: "",
            render: (k) => {
              if (k.revoked) return "";
              const o = h("div");
              return h("div", null, confirmButton("Revoke", "Confirm revoke", (b) => act(b, () => api("DELETE", `/api/v2/tailnet/-/keys/${encodeURIComponent(k.id)}`), { out: o, done: load })), o);
            },
          });
        }
        replace(out, table({ columns, rows, empty: "No keys." }));
      })
      .catch((e) => {
        if (e.name !== "AbortError") replace(out, errorNotice(e));
      });
  if (writable) root.appendChild(createForm(load));
  root.appendChild(out);
  load();
}

export default { path: PATH, title: "Keys", perm: "config:read", render };
