// The console's shell: session, navigation, routing, keyboard.

import { can, currentSession, loadSession, onSession, signOut, setSession } from "./api.js";
import { current, go, href, onRoute } from "./router.js";
import { badge, clear, errorNotice, h, notice, pageHead, replace, toast } from "./ui.js";

import signin from "./pages/signin.js";
import setup from "./pages/setup.js";
import overview from "./pages/overview.js";
import logs from "./pages/logs.js";
import flows from "./pages/flows.js";
import reconciliation from "./pages/reconciliation.js";
import alerts from "./pages/alerts.js";
import recordings from "./pages/recordings.js";
import audit from "./pages/audit.js";
import devices from "./pages/devices.js";
import users from "./pages/users.js";
import keys from "./pages/keys.js";
import settings from "./pages/settings.js";
import rules from "./pages/rules.js";
import streams from "./pages/streams.js";

/**
 * Every page: `path`, `title`, `perm` (what its reads need), `nav` (shown
 * in the bar) and `render(root, params, ctx)` which may answer a cleanup
 * function (called when the page is left or re-rendered).
 */
const PAGES = [overview, logs, flows, reconciliation, alerts, recordings, audit, devices, users, keys, settings, rules, streams];
const PUBLIC = [signin, setup];

const main = () => document.getElementById("main");
let leave = null;
let controller = null;
let lastPath = null;

function pageFor(path) {
  return PAGES.find((p) => p.path === path) || PUBLIC.find((p) => p.path === path) || null;
}

/** Whether the caller may open a page (any of its `perm` list). */
function allowed(page) {
  if (!page.perm) return true;
  const perms = Array.isArray(page.perm) ? page.perm : [page.perm];
  return perms.some((p) => can(p));
}

function renderNav() {
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  const s = currentSession();
  clear(nav);
  clear(who);
  if (!s) return;
  const { path } = current();
  for (const p of PAGES) {
    if (p.nav === false || !allowed(p)) continue;
    nav.appendChild(h("a", { href: href(p.path), attrs: { "aria-current": p.path === path ? "page" : null } }, p.title));
  }
  const user = s.user || {};
  who.appendChild(h("span", { title: `tailnet ${s.tailnet ? s.tailnet.id : ""}` }, s.tailnet ? s.tailnet.name : ""));
  who.appendChild(h("span", { class: "mono", id: "who-login", title: user.displayName || "" }, user.loginName || ""));
  who.appendChild(badge(user.role || "?", "info"));
  who.lastChild.id = "who-role";
  who.appendChild(h("button", { type: "button", id: "signout", onclick: () => signOut().catch(() => {}).finally(() => go("/signin")) }, "Sign out"));
}

function render() {
  const route = current();
  const s = currentSession();
  if (leave) {
    try {
      leave();
    } catch {
      /* a page's cleanup must not stop navigation */
    }
    leave = null;
  }
  if (controller) controller.abort();
  controller = new AbortController();
  let page = pageFor(route.path);
  if (!s && !(page && PUBLIC.includes(page))) {
    // Not signed in: the sign-in page, coming back here afterwards.
    const next = route.path === "/signin" ? "" : location.hash.replace(/^#/, "");
    page = signin;
    route.params = new URLSearchParams(next ? { next } : {});
  }
  if (s && page === signin) {
    // Signed in: on to where the visitor was going.
    let next = route.params.get("next") || "/";
    if (!next.startsWith("/") || next.startsWith("/signin") || next.startsWith("/setup")) next = "/";
    history.replaceState(null, "", `#${next}`);
    render();
    return;
  }
  renderNav();
  const root = main();
  const samePage = lastPath === route.path;
  const focusedId = samePage && document.activeElement ? document.activeElement.id : null;
  lastPath = route.path;
  clear(root);
  if (!page) {
    root.appendChild(pageHead("Not found"));
    root.appendChild(notice("warn", `No page ${route.path}. `, h("a", { href: "#/" }, "Overview")));
    return;
  }
  document.title = `${page.title} · Tally`;
  if (s && !allowed(page) && route.path === "/") {
    // A role without the overview (a member) starts at its first page.
    const first = PAGES.find((p) => p.nav !== false && allowed(p));
    if (first) {
      history.replaceState(null, "", `#${first.path}`);
      render();
      return;
    }
  }
  if (s && !allowed(page)) {
    const perms = Array.isArray(page.perm) ? page.perm.join(" or ") : page.perm;
    root.appendChild(pageHead(page.title));
    root.appendChild(notice("warn", `Your role (${s.user.role}) does not allow ${perms}, which this page needs; ask an owner or admin.`));
    return;
  }
  try {
    const out = page.render(root, route.params, { signal: controller.signal, session: s });
    if (typeof out === "function") leave = out;
  } catch (e) {
    root.appendChild(errorNotice(e));
  }
  // Keep the focus where it was on a filter change; on a new page, move it
  // to the heading so screen readers announce it.
  const again = focusedId && document.getElementById(focusedId);
  if (again) again.focus();
  else if (!samePage) {
    const title = document.getElementById("page-title");
    if (title) title.focus({ preventScroll: true });
  }
}

// Keyboard: "/" focuses the page's filter; "g" then a letter opens a page.
const JUMPS = { o: "/", l: "/logs", f: "/flows", r: "/reconciliation", a: "/alerts", u: "/audit", d: "/devices", k: "/keys", s: "/settings" };
let pendingG = 0;
document.addEventListener("keydown", (ev) => {
  const t = ev.target;
  const typing = t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName));
  if (ev.key === "Escape" && typing) {
    t.blur();
    return;
  }
  if (typing || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (ev.key === "/") {
    const f = document.querySelector("[data-filter]");
    if (f) {
      ev.preventDefault();
      f.focus();
      if (f.select) f.select();
    }
    return;
  }
  if (ev.key === "g") {
    pendingG = Date.now();
    return;
  }
  if (pendingG && Date.now() - pendingG < 1500 && JUMPS[ev.key] && currentSession()) {
    pendingG = 0;
    ev.preventDefault();
    go(JUMPS[ev.key]);
  }
  pendingG = 0;
});

document.getElementById("skip").addEventListener("click", () => {
  const t = document.getElementById("page-title") || main();
  t.focus();
});

// A script error is shown, not swallowed (and kept for whoever debugs it).
window.tallyConsoleErrors = [];
function scriptError(message) {
  window.tallyConsoleErrors.push(String(message));
  toast("error", `The console hit an error: ${message}. Reload the page; if it persists, report it.`);
}
window.addEventListener("error", (e) => scriptError(e.message || e));
window.addEventListener("unhandledrejection", (e) => {
  const r = e.reason;
  if (r && r.name === "AbortError") return;
  scriptError(r && r.message ? r.message : r);
});

onRoute(render);
let known = undefined;
onSession((s) => {
  // Re-render when signing in or out (not on every refresh of the same session).
  const id = s ? `${s.user && s.user.id}/${s.tailnet && s.tailnet.id}` : null;
  if (id !== known) {
    known = id;
    render();
  }
});

(async () => {
  try {
    const s = await loadSession();
    known = s ? `${s.user && s.user.id}/${s.tailnet && s.tailnet.id}` : null;
    setSession(s);
    render();
  } catch (e) {
    replace(main(), pageHead("Tally"), errorNotice(e));
  }
})();

export { PAGES };
