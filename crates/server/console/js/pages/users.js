// Users (`/api/v2/tailnet/-/users`, as `tally users`): create, change role,
// set a password, delete, with `users:write`. The rank rule (who may manage
// whom) is the server's: its refusal is shown as it says it.

import { api, can, currentSession, get } from "../api.js";
import { act, badge, confirmButton, errorNotice, filterForm, formRow, h, notice, pageHead, replace, table, timeEl } from "../ui.js";

const PATH = "/users";
const ROLES = ["owner", "admin", "network-admin", "it-admin", "billing-admin", "auditor", "member"];

function roleSelect(value, label) {
  return h("select", { attrs: { "aria-label": label } }, ROLES.map((r) => h("option", { value: r, selected: r === value }, r)));
}

function createForm(reload) {
  const out = h("div", { attrs: { "aria-live": "polite" } });
  const login = h("input", { id: "new-user-login", class: "w-l", placeholder: "alice@example.com", autocomplete: "off", spellcheck: false });
  const display = h("input", { id: "new-user-name", class: "w-l", autocomplete: "off" });
  const role = roleSelect("member", "role of the new user");
  role.id = "new-user-role";
  const go = h("button", { type: "submit", class: "primary" }, "Create user");
  return h(
    "details",
    null,
    h("summary", null, "Create a user"),
    h(
      "form",
      {
        onsubmit: (ev) => {
          ev.preventDefault();
          act(go, () => api("POST", "/api/v2/tailnet/-/users", { body: { loginName: login.value.trim(), displayName: display.value.trim(), role: role.value } }), {
            out,
            done: (u) => {
              replace(out, notice("ok", `Created ${u.loginName} (${u.role}). Give them a password below (Set password) or a one-time link (Setup link).`));
              reload();
            },
          });
        },
      },
      h("div", { class: "form-grid" }, formRow("Login name", login), formRow("Display name", display), formRow("Role", role)),
      h("div", { class: "actions" }, go),
    ),
    out,
  );
}

function actions(u, reload) {
  const out = h("div");
  const role = roleSelect(u.role, `role of ${u.loginName}`);
  const setRole = h("button", { type: "button" }, "Set role");
  setRole.addEventListener("click", () => act(setRole, () => api("POST", `/api/v2/users/${encodeURIComponent(u.id)}/role`, { body: { role: role.value } }), { out, done: reload }));
  const pw = h("input", { type: "password", class: "w-m", placeholder: "new password", autocomplete: "new-password", attrs: { "aria-label": `new password of ${u.loginName}` } });
  const setPw = h("button", { type: "button" }, "Set password");
  setPw.addEventListener("click", () =>
    act(setPw, () => api("POST", `/api/v2/users/${encodeURIComponent(u.id)}/password`, { body: { password: pw.value } }), {
      out,
      done: () => {
        pw.value = "";
        replace(out, notice("ok", `Password of ${u.loginName} set.`));
      },
    }),
  );
  const invite = h("button", { type: "button", class: "invite" }, "Setup link");
  invite.addEventListener("click", () =>
    act(invite, () => api("POST", `/api/v2/users/${encodeURIComponent(u.id)}/password-setup`), {
      out,
      done: (v) => replace(out, notice("warn", `A one-time link for ${u.loginName} to set a password (until ${v.expires}); send it privately:`, h("div", { class: "secret setup-link" }, `${location.origin}${v.path}`))),
    }),
  );
  const del = confirmButton("Delete", "Confirm delete", (b) => act(b, () => api("POST", `/api/v2/users/${encodeURIComponent(u.id)}/delete`), { out, done: reload }));
  return h("div", null, h("div", { class: "actions" }, role, setRole, pw, setPw, invite, del), out);
}

function render(root, params, { signal }) {
  root.appendChild(pageHead("Users"));
  root.appendChild(filterForm(PATH, params, [{ name: "q", label: "Login or name", cls: "w-l" }, { name: "role", label: "Role", type: "select", options: [["", "any"], ...ROLES.map((r) => [r, r])] }]));
  const writable = can("users:write");
  const out = h("div", { id: "users" }, h("p", { class: "muted" }, "Loading…"));
  const q = (params.get("q") || "").toLowerCase();
  const wantRole = params.get("role") || "";
  const load = () =>
    get("/api/v2/tailnet/-/users", undefined, signal)
      .then((v) => {
        const me = currentSession() && currentSession().user ? currentSession().user.id : "";
        const rows = (v.users || []).filter((u) => (!q || `${u.loginName} ${u.displayName}`.toLowerCase().includes(q)) && (!wantRole || u.role === wantRole));
        const columns = [
          { title: "Login", render: (u) => h("span", null, u.loginName, u.id === me ? h("span", { class: "muted" }, " (you)") : null) },
          { title: "Name", render: (u) => u.displayName || "–" },
          { title: "Role", render: (u) => badge(u.role, u.role === "owner" || u.role === "admin" ? "info" : null) },
          { title: "Status", render: (u) => u.status || "–" },
          { title: "ID", cls: "mono small", render: (u) => u.id },
          { title: "Created", cls: "time", render: (u) => timeEl(u.created) },
        ];
        if (writable) columns.push({ title: "Change", render: (u) => actions(u, load) });
        replace(out, table({ columns, rows, empty: "No user matches." }));
      })
      .catch((e) => {
        if (e.name !== "AbortError") replace(out, errorNotice(e));
      });
  if (writable) root.appendChild(createForm(load));
  root.appendChild(out);
  load();
}

export default { path: PATH, title: "Users", perm: "config:read", render };
