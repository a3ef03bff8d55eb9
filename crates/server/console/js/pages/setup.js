// A one-time setup link (`tally users invite <login>` prints
// `<server>/#/setup?token=...`): choose a password, then signed in.

import { api, setSession } from "../api.js";
import { errorNotice, h, notice, replace } from "../ui.js";

function render(root, params) {
  const token = params.get("token") || "";
  const out = h("div", { id: "setup-message", attrs: { "aria-live": "polite" } });
  const head = h("h1", { tabIndex: -1, id: "page-title" }, "Set your password");
  if (!token) {
    root.appendChild(h("div", { class: "signin" }, h("div", { class: "panel" }, head, notice("error", "This setup link has no token. Ask an admin for a new one (tally users invite <login>)."))));
    return;
  }
  const pw = h("input", { id: "new-password", type: "password", autocomplete: "new-password", required: true });
  const again = h("input", { id: "new-password-again", type: "password", autocomplete: "new-password", required: true });
  const button = h("button", { type: "submit", class: "primary", id: "setup-submit" }, "Set password and sign in");
  const form = h(
    "form",
    {
      id: "setup-form",
      onsubmit: async (ev) => {
        ev.preventDefault();
        replace(out);
        if (pw.value !== again.value) {
          replace(out, notice("error", "The two passwords differ."));
          again.focus();
          return;
        }
        button.disabled = true;
        try {
          const s = await api("POST", "/api/v2/session/setup", { body: { token, password: pw.value } });
          // Leave the link (its token is spent) before the shell re-renders.
          history.replaceState(null, "", "#/");
          setSession(s);
        } catch (e) {
          replace(out, errorNotice(e));
        } finally {
          if (button.isConnected) button.disabled = false;
        }
      },
    },
    h("label", { class: "field", for: "new-password" }, h("span", null, "New password"), pw),
    h("label", { class: "field", for: "new-password-again" }, h("span", null, "The same again"), again),
    h("div", { class: "actions" }, button),
  );
  root.appendChild(h("div", { class: "signin" }, h("div", { class: "panel" }, head, h("p", { class: "muted" }, "This link works once."), out, form)));
  pw.focus();
}

export default { path: "/setup", title: "Set password", nav: false, render };
