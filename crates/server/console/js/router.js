// Hash routes: `#/<page>?<filters>`. A page's filters live in the URL, so a
// view can be shared, bookmarked and reloaded; the page re-renders from
// the URL whenever it changes.

const listeners = new Set();

/** The current route: `{path, params}` (params: URLSearchParams). */
export function current() {
  const raw = location.hash.replace(/^#/, "");
  const q = raw.indexOf("?");
  const path = (q < 0 ? raw : raw.slice(0, q)) || "/";
  const params = new URLSearchParams(q < 0 ? "" : raw.slice(q + 1));
  return { path: path.startsWith("/") ? path : `/${path}`, params };
}

/** The link to `path` with `params` (an object or URLSearchParams; empty values left out). */
export function href(path, params) {
  const p = new URLSearchParams();
  if (params) {
    const entries = params instanceof URLSearchParams ? params.entries() : Object.entries(params);
    for (const [k, v] of entries) {
      if (v === undefined || v === null || v === "" || v === false) continue;
      p.set(k, v === true ? "1" : String(v));
    }
  }
  const qs = p.toString();
  return `#${path}${qs ? `?${qs}` : ""}`;
}

function notify() {
  for (const f of listeners) f(current());
}

/**
 * Goes to `path` with `params`. `replace` rewrites the current history
 * entry instead of adding one (used when a page normalises its own URL).
 */
export function go(path, params, { replace = false } = {}) {
  const h = href(path, params);
  if (location.hash === h) {
    notify();
  } else if (replace) {
    history.replaceState(null, "", h);
    notify();
  } else {
    location.hash = h;
  }
}

/** Calls `f(route)` on every route change. */
export function onRoute(f) {
  listeners.add(f);
}

window.addEventListener("hashchange", notify);

/**
 * Rewrites the URL to `path` with `params` without re-rendering (a page
 * keeping its URL in step with state it changed itself, e.g. a slider).
 */
export function setQuiet(path, params) {
  const h = href(path, params);
  if (location.hash !== h) history.replaceState(null, "", h);
}
