// SSH session recordings (`GET .../recordings`, as `tally recordings
// list`) and a replay of one (`.../recordings/{id}/cast`, as `tally
// recordings play`: opening a recording is itself audited, READ of the
// RECORDING). The replay draws the session on a small terminal screen
// (js/term.js) with its original timing (idle gaps cut to 2 s), at 1x to
// 8x, with a position slider; the .cast file can be saved as received. A
// recording in progress can be followed live (`.../cast?follow=true`).

import { errorOf, get, request } from "../api.js";
import { fmtBytes, fmtNum, fmtSpan, timeArg } from "../format.js";
import { go } from "../router.js";
import { Screen } from "../term.js";
import { badge, errorNotice, filterForm, h, kv, link, notice, pageHead, replace, table, timeEl } from "../ui.js";

const PATH = "/recordings";
/** Idle gaps longer than this are cut to it in a replay, in seconds. */
const IDLE_LIMIT = 2;

/** Parses an asciicast v2 file: its header and output events (time in s, data). */
export function parseCast(text) {
  const lines = text.split("\n");
  let header = {};
  try {
    header = JSON.parse(lines[0] || "{}");
  } catch {
    throw new Error("this recording does not start with an asciicast v2 header");
  }
  const events = [];
  let bad = 0;
  for (let i = 1; i < lines.length; i += 1) {
    if (!lines[i].trim()) continue;
    try {
      const e = JSON.parse(lines[i]);
      if (Array.isArray(e) && (e[1] === "o" || e[1] === "r")) events.push([Number(e[0]) || 0, e[1], String(e[2] ?? "")]);
    } catch {
      bad += 1;
    }
  }
  // Replay time: idle gaps cut to IDLE_LIMIT.
  let last = 0;
  let at = 0;
  for (const e of events) {
    at += Math.min(Math.max(0, e[0] - last), IDLE_LIMIT);
    last = e[0];
    e.push(at);
  }
  return { header, events, bad, length: at };
}

function player(root, rec, signal) {
  const screenEl = h("pre", { class: "term", id: "term", tabIndex: 0, attrs: { "aria-label": "the recorded terminal", role: "img" } });
  const status = h("span", { class: "mono small", id: "replay-time" }, "loading…");
  const play = h("button", { type: "button", id: "replay-play" }, "Play");
  const speed = h("select", { id: "replay-speed", attrs: { "aria-label": "speed" } }, [1, 2, 4, 8].map((s) => h("option", { value: String(s) }, `${s}x`)));
  const pos = h("input", { type: "range", id: "replay-position", min: 0, max: 1000, value: 0, attrs: { "aria-label": "position" } });
  const end = h("button", { type: "button", id: "replay-end" }, "Jump to end");
  const live = rec.state === "recording";
  const follow = live ? h("button", { type: "button", id: "replay-follow", class: "primary" }, "Follow live") : null;
  const liveState = h("span", { class: "mono small", id: "replay-live" });
  const msgs = h("div");
  const castUrl = `/api/v2/tailnet/-/recordings/${encodeURIComponent(rec.id)}/cast`;
  root.appendChild(
    h(
      "section",
      { id: "replay", class: "replay" },
      h("h2", null, `Replay of ${rec.id}`),
      kv([
        ["Node", rec.srcNode || rec.srcNodeID || "–"],
        ["SSH user → local user", `${rec.sshUser || "–"} → ${rec.localUser || "–"}`],
        ["Tailnet user", rec.srcNodeUser || "–"],
        ["Command", rec.command || "(interactive shell)"],
        ["Recorded", h("span", null, timeEl(rec.start), " – ", timeEl(rec.end))],
        ["State", rec.state === "complete" ? badge("complete", "ok") : rec.state === "recording" ? badge("recording now", "info") : badge(`cut short${rec.reason ? `: ${rec.reason}` : ""}`, "warn")],
      ]),
      h("p", { class: "muted small" }, "Opening a recording is recorded in the audit log. Idle gaps are cut to 2 s. ", h("a", { href: castUrl, download: `${rec.id}.cast` }, "Save the .cast file"), " (asciinema play reads it)."),
      msgs,
      h("div", { class: "slider" }, play, speed, pos, status, end),
      live ? h("div", { class: "actions" }, follow, liveState) : null,
      screenEl,
    ),
  );
  let cast = null;
  let screen = null;
  let t = 0; // replay time shown, in s
  let next = 0; // index of the next event to apply
  let timer = 0;
  let started = 0;
  let from = 0;

  const show = () => {
    screen.render(screenEl);
    status.textContent = `${fmtSpan(t)} / ${fmtSpan(cast.length)}`;
    pos.value = String(cast.length ? Math.round((t / cast.length) * 1000) : 1000);
  };
  const apply = (until) => {
    while (next < cast.events.length && cast.events[next][3] <= until) {
      const [, kind, data] = cast.events[next];
      if (kind === "o") screen.write(data);
      else if (kind === "r") {
        const [c, r] = data.split("x").map(Number);
        if (c && r) screen.reset(c, r);
      }
      next += 1;
    }
    t = Math.min(until, cast.length);
  };
  const seek = (to) => {
    screen.reset(cast.header.width, cast.header.height);
    next = 0;
    apply(to);
    show();
  };
  const stop = () => {
    cancelAnimationFrame(timer);
    timer = 0;
    play.textContent = "Play";
  };
  const tick = (now) => {
    apply(from + ((now - started) / 1000) * Number(speed.value));
    show();
    if (t >= cast.length) stop();
    else timer = requestAnimationFrame(tick);
  };
  play.addEventListener("click", () => {
    if (!cast) return;
    if (timer) {
      stop();
      return;
    }
    if (t >= cast.length) seek(0);
    play.textContent = "Pause";
    from = t;
    started = performance.now();
    timer = requestAnimationFrame(tick);
  });
  speed.addEventListener("change", () => {
    from = t;
    started = performance.now();
  });
  pos.addEventListener("input", () => {
    if (!cast) return;
    stop();
    seek((Number(pos.value) / 1000) * cast.length);
  });
  end.addEventListener("click", () => {
    if (!cast) return;
    stop();
    seek(cast.length);
  });

  // Live: `?follow=true` streams the recording from its start and goes on
  // until it ends; each event is drawn as it comes, at most once a frame.
  let following = false;
  async function followLive() {
    stop();
    following = true;
    follow.disabled = true;
    for (const b of [play, pos, end]) b.disabled = true;
    liveState.textContent = "connecting…";
    const resp = await request("GET", castUrl, { query: { follow: "true" }, signal });
    if (!resp.ok) throw await errorOf(resp);
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    let header = null;
    let events = 0;
    let frame = 0;
    const draw = () => {
      frame = 0;
      screen.render(screenEl);
      liveState.textContent = `live · ${fmtNum(events)} events`;
      liveState.dataset.live = "1";
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line) continue;
        let v;
        try {
          v = JSON.parse(line);
        } catch {
          continue;
        }
        if (!header) {
          header = v;
          screen = new Screen(header.width || 80, header.height || 24);
          continue;
        }
        if (!Array.isArray(v)) continue;
        if (v[1] === "o") screen.write(String(v[2] ?? ""));
        else if (v[1] === "r") {
          const [c, r] = String(v[2] ?? "").split("x").map(Number);
          if (c && r) screen.reset(c, r);
        }
        events += 1;
      }
      if (screen && !frame) frame = requestAnimationFrame(draw);
    }
    if (frame) cancelAnimationFrame(frame);
    if (screen) draw();
    delete liveState.dataset.live;
    liveState.textContent = `the recording ended · ${fmtNum(events)} events`;
    liveState.dataset.ended = "1";
  }
  if (follow) {
    follow.addEventListener("click", () => {
      followLive().catch((e) => {
        if (e.name !== "AbortError") {
          liveState.textContent = "disconnected";
          replace(msgs, errorNotice(e));
        }
      });
    });
  }

  (async () => {
    const resp = await request("GET", castUrl, { signal });
    if (!resp.ok) throw await errorOf(resp);
    const parsed = parseCast(await resp.text());
    // Following live already draws the session: leave the screen to it.
    if (following) return;
    cast = parsed;
    screen = new Screen(cast.header.width, cast.header.height);
    if (cast.bad) msgs.appendChild(notice("warn", `${fmtNum(cast.bad)} lines of the recording could not be read and are left out.`));
    if (live) msgs.appendChild(notice("info", "This session is still being recorded: this replay ends where the recording was when opened; Follow live draws it as it goes on (as tally recordings tail does)."));
    // Start at the end: what the session left on the screen.
    seek(cast.length);
  })().catch((e) => {
    if (e.name !== "AbortError") replace(msgs, errorNotice(e));
  });
  return stop;
}

function render(root, params, { signal }) {
  root.appendChild(pageHead("Recordings"));
  root.appendChild(
    filterForm(PATH, params, [
      { name: "since", label: "Since", placeholder: "7d", cls: "w-s" },
      { name: "until", label: "Until", placeholder: "now", cls: "w-s" },
      { name: "node", label: "Node", placeholder: "name or ID" },
      { name: "user", label: "User", placeholder: "SSH, local or tailnet user" },
    ]),
  );
  const out = h("div", { id: "recordings" }, h("p", { class: "muted" }, "Loading…"));
  root.appendChild(out);
  const replayBox = h("div");
  root.appendChild(replayBox);
  let q;
  try {
    q = { start: timeArg(params.get("since") || "7d", "since"), end: timeArg(params.get("until"), "until"), node: params.get("node") || "", user: params.get("user") || "", limit: 500 };
  } catch (e) {
    replace(out, errorNotice(e));
    return undefined;
  }
  const base = Object.fromEntries([...params.entries()].filter(([k]) => k !== "play"));
  let stopReplay = null;
  get("/api/v2/tailnet/-/recordings", q, signal)
    .then((v) => {
      const rows = v.recordings || [];
      replace(
        out,
        v.truncated ? notice("info", `The newest ${fmtNum(rows.length)} are listed; narrow the range to see older ones.`) : null,
        table({
          columns: [
            { title: "Start (UTC)", cls: "time", render: (r) => timeEl(r.start) },
            { title: "Duration", cls: "num", render: (r) => fmtSpan((Date.parse(r.end) - Date.parse(r.start)) / 1000) },
            { title: "Node", render: (r) => r.srcNode || r.srcNodeID || "–" },
            { title: "SSH user", render: (r) => r.sshUser || "–" },
            { title: "Local user", render: (r) => r.localUser || "–" },
            { title: "Tailnet user", render: (r) => r.srcNodeUser || "–" },
            { title: "Command", cls: "mono small", render: (r) => r.command || "" },
            { title: "Size", cls: "num", render: (r) => fmtBytes(r.bytes) },
            { title: "State", render: (r) => (r.state === "complete" ? badge("complete", "ok") : r.state === "recording" ? badge("recording", "info") : badge("cut short", "warn")) },
            { title: "", render: (r) => link("Replay", PATH, { ...base, play: r.id }, { class: "replay-link" }) },
          ],
          rows,
          rowClass: (r) => (r.id === params.get("play") ? "recording-row expanded" : "recording-row"),
          empty: "No recordings in this range. Sessions are recorded when the SSH policy's recorder points at tally server --recorder-listen.",
        }),
      );
      const want = params.get("play");
      if (want) {
        const rec = rows.find((r) => r.id === want);
        if (rec) stopReplay = player(replayBox, rec, signal);
        else
          get(`/api/v2/tailnet/-/recordings/${encodeURIComponent(want)}`, undefined, signal)
            .then((r) => {
              stopReplay = player(replayBox, r, signal);
            })
            .catch((e) => {
              if (e.name !== "AbortError") replace(replayBox, errorNotice(e), h("button", { type: "button", onclick: () => go(PATH, base) }, "Close"));
            });
      }
    })
    .catch((e) => {
      if (e.name !== "AbortError") replace(out, errorNotice(e));
    });
  return () => {
    if (stopReplay) stopReplay();
  };
}

export default { path: PATH, title: "Recordings", perm: "logs:read", render };
