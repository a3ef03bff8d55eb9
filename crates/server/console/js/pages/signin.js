// Sign in: a login name and password (set with `tally users set-password`
// or a one-time setup link), or an API key pasted once. The server answers
// a session cookie (HttpOnly: this page never holds it) and a CSRF token.

import { signIn } from "../api.js";
import { errorNotice, h, replace } from "../ui.js";

function render(root, params) {
  const out = h("div", { id: "signin-message", attrs: { "aria-live": "polite" } });
  const login = h("input", { id: "login", name: "username", autocomplete: "username", required: true, spellcheck: false });
  const password = h("input", { id: "password", type: "password", name: "password", autocomplete: "current-password", required: true });
  const tailnet = h("input", { id: "tailnet", name: "tailnet", autocomplete: "off", placeholder: "only if your login is in several", spellcheck: false });
  const apiKey = h("input", { id: "api-key", type: "password", name: "apiKey", autocomplete: "off", placeholder: "tally-key-…", spellcheck: false });

  async function submit(ev, body, button) {
    ev.preventDefault();
    replace(out);
    button.disabled = true;
    try {
      await signIn(body);
      // The shell re-renders on the new session and goes on to `next`.
    } catch (e) {
      replace(out, errorNotice(e));
      if (body.password !== undefined) {
        password.value = "";
        password.focus();
      } else {
        apiKey.value = "";
        apiKey.focus();
      }
    } finally {
      if (button.isConnected) button.disabled = false;
    }
  }

  const pwButton = h("button", { type: "submit", class: "primary", id: "signin-submit" }, "Sign in");
  const pwForm = h(
    "form",
    { id: "signin-form", onsubmit: (ev) => submit(ev, { loginName: login.value.trim(), password: password.value, ...(tailnet.value.trim() ? { tailnet: tailnet.value.trim() } : {}) }, pwButton) },
    h("label", { class: "field", for: "login" }, h("span", null, "Login name"), login),
    h("label", { class: "field", for: "password" }, h("span", null, "Password"), password),
    h("details", null, h("summary", { class: "muted small" }, "Tailnet"), h("label", { class: "field", for: "tailnet" }, h("span", null, "Tailnet name"), tailnet)),
    h("div", { class: "actions" }, pwButton),
  );
  const keyButton = h("button", { type: "submit", id: "key-submit" }, "Sign in with key");
  const keyForm = h(
    "form",
    { id: "key-form", onsubmit: (ev) => submit(ev, { apiKey: apiKey.value.trim() }, keyButton) },
    h("label", { class: "field", for: "api-key" }, h("span", null, "API key"), apiKey),
    h("p", { class: "muted small" }, "The key is sent once to start a session; the console does not keep it."),
    h("div", { class: "actions" }, keyButton),
  );
  root.appendChild(
    h(
      "div",
      { class: "signin" },
      h("div", { class: "panel" }, h("h1", { tabIndex: -1, id: "page-title" }, "Sign in to Tally"), out, pwForm, h("div", { class: "or" }, "or"), keyForm),
      h("p", { class: "muted small" }, "No password yet? An admin runs ", h("code", null, "tally users set-password <login> --password-stdin"), " or ", h("code", null, "tally users invite <login>"), " for a one-time setup link."),
    ),
  );
  if (params.get("next")) {
    out.appendChild(h("p", { class: "muted small" }, "Sign in to continue."));
  }
  login.focus();
}

export default { path: "/signin", title: "Sign in", nav: false, render };
