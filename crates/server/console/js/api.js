// The console's only way to the server: the same /api/v2 and /c/... calls
// the CLI makes, authenticated by the session cookie (HttpOnly: this code
// never sees it). State-changing calls carry the session's CSRF token.
// Errors are the server's JSON `error` message, shown verbatim.

const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);

let session = null;
const sessionListeners = new Set();

/** An answer other than 2xx, with the server's message. */
export class ApiError extends Error {
  constructor(status, message, body = null, retryAfter = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.body = body;
    this.retryAfter = retryAfter;
  }
}

/** The signed-in session ({csrfToken, user, tailnet, permissions}) or null. */
export function currentSession() {
  return session;
}

/** Replaces the session and tells the listeners (the shell re-renders). */
export function setSession(s) {
  session = s;
  for (const f of sessionListeners) f(s);
}

/** Calls `f(session)` whenever the session changes. */
export function onSession(f) {
  sessionListeners.add(f);
}

/** Whether the caller's role has `permission` (the server decides anyway). */
export function can(permission) {
  return !!session && Array.isArray(session.permissions) && session.permissions.includes(permission);
}

/** `path` with `query` (an object; empty values left out, arrays repeated). */
export function url(path, query) {
  const u = new URL(path, location.origin);
  if (query) {
    for (const [k, v] of Object.entries(query)) {
      if (v === undefined || v === null || v === "") continue;
      if (Array.isArray(v)) {
        for (const x of v) u.searchParams.append(k, String(x));
      } else {
        u.searchParams.set(k, String(v));
      }
    }
  }
  return u.pathname + u.search;
}

/** The error of a failed answer: its JSON `error`, else its status. */
export async function errorOf(resp) {
  let body = null;
  let message = "";
  const text = await resp.text().catch(() => "");
  try {
    body = JSON.parse(text);
    if (body && typeof body.error === "string") message = body.error;
  } catch {
    /* not JSON */
  }
  if (!message) message = text.trim().slice(0, 500) || `${resp.status} ${resp.statusText || "error"}`;
  const retry = resp.headers.get("Retry-After");
  if (resp.status === 401 && session) {
    // The session ended (expired, signed out elsewhere, user removed).
    setSession(null);
  }
  return new ApiError(resp.status, message, body, retry);
}

/**
 * Sends a request and answers the Response (any status). `body` is sent as
 * JSON unless it is a string (sent as is, with `contentType`).
 */
export async function request(method, path, { query, body, signal, contentType } = {}) {
  const headers = { Accept: "application/json" };
  let payload;
  if (body !== undefined) {
    if (typeof body === "string") {
      payload = body;
      headers["Content-Type"] = contentType || "text/plain; charset=utf-8";
    } else {
      payload = JSON.stringify(body);
      headers["Content-Type"] = "application/json";
    }
  }
  if (UNSAFE.has(method)) {
    headers["Tally-Origin"] = "CONSOLE";
    if (session && session.csrfToken) headers["X-CSRF-Token"] = session.csrfToken;
  }
  try {
    return await fetch(url(path, query), {
      method,
      headers,
      body: payload,
      credentials: "same-origin",
      cache: "no-store",
      redirect: "error",
      signal,
    });
  } catch (e) {
    if (e && e.name === "AbortError") throw e;
    throw new ApiError(0, `the server could not be reached (${e && e.message ? e.message : e}); is it running?`);
  }
}

/** Sends a request and answers its JSON; a non-2xx answer throws [ApiError]. */
export async function api(method, path, opts = {}) {
  const resp = await request(method, path, opts);
  if (!resp.ok) throw await errorOf(resp);
  const text = await resp.text();
  if (!text) return {};
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** `GET path?query` as JSON. */
export function get(path, query, signal) {
  return api("GET", path, { query, signal });
}

// --- sessions -------------------------------------------------------------

/** Reads the current session (null when not signed in). */
export async function loadSession() {
  const resp = await request("GET", "/api/v2/session");
  if (resp.status === 401) return null;
  if (!resp.ok) throw await errorOf(resp);
  return resp.json();
}

/** Signs in with a login and password, or with `{apiKey}`; answers the session. */
export async function signIn(credentials) {
  const s = await api("POST", "/api/v2/session", { body: credentials });
  setSession(s);
  return s;
}

/** Completes a one-time setup link: sets the password and signs in. */
export async function completeSetup(token, password) {
  const s = await api("POST", "/api/v2/session/setup", { body: { token, password } });
  setSession(s);
  return s;
}

/** Signs out (the server forgets the session; the cookie is cleared). */
export async function signOut() {
  try {
    await api("DELETE", "/api/v2/session");
  } finally {
    setSession(null);
  }
}

// --- shared lookups --------------------------------------------------------

let devicesCache = null;

/**
 * The tailnet's devices with lookups by ID, name and instance (public ID),
 * read at most every 15 s (names in other pages' rows), or now with `fresh`.
 */
export async function devices(signal, { fresh = false } = {}) {
  if (!fresh && devicesCache && Date.now() - devicesCache.at < 15000) return devicesCache.value;
  const v = await get("/api/v2/tailnet/-/devices", undefined, signal);
  const list = v.devices || [];
  const byId = new Map();
  const byInstance = new Map();
  const byAddress = new Map();
  for (const d of list) {
    byId.set(d.id, d);
    if (d.instance) byInstance.set(d.instance, d);
    for (const a of d.addresses || []) byAddress.set(a.split("/")[0], d);
  }
  const value = { list, byId, byInstance, byAddress };
  devicesCache = { at: Date.now(), value };
  return value;
}

/** Forgets cached lookups (after a change to devices). */
export function forgetDevices() {
  devicesCache = null;
}

/** A device's name for its ID, or the ID itself. */
export function nodeName(lookup, id) {
  const d = lookup && lookup.byId.get(id);
  return d ? d.name || d.hostname || id : id;
}
