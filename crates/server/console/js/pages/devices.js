// Devices (`GET /api/v2/tailnet/-/devices`, as `tally nodes list`): rename,
// tag and remove with `devices:write` (the API's messages verbatim).

import { api, can, devices, forgetDevices } from "../api.js";
import { fmtAgo } from "../format.js";
import { act, badge, confirmButton, errorNotice, filterForm, h, link, pageHead, replace, table, timeEl } from "../ui.js";

const PATH = "/devices";

function editor(d, rerender) {
  const out = h("div");
  const name = h("input", { value: d.name, class: "w-m", attrs: { "aria-label": `new name of ${d.name}` }, autocomplete: "off" });
  const tags = h("input", { value: (d.tags || []).join(" "), class: "w-l", placeholder: "tag:web tag:prod", attrs: { "aria-label": `tags of ${d.name}` }, autocomplete: "off" });
  const save = h("button", { type: "submit" }, "Save");
  const form = h(
    "form",
    {
      class: "actions",
      onsubmit: (ev) => {
        ev.preventDefault();
        const wanted = tags.value.split(/[\s,]+/).filter(Boolean);
        act(
          save,
          () => api("PATCH", `/api/v2/device/${encodeURIComponent(d.id)}`, { body: { name: name.value.trim(), tags: wanted } }),
          { out, done: () => { forgetDevices(); rerender(); } },
        );
      },
    },
    name,
    tags,
    save,
    confirmButton("Remove", "Confirm remove", (b) => act(b, () => api("DELETE", `/api/v2/device/${encodeURIComponent(d.id)}`), { out, done: () => { forgetDevices(); rerender(); } })),
  );
  return h("div", null, form, out);
}

function render(root, params, { signal }) {
  root.appendChild(pageHead("Devices"));
  root.appendChild(filterForm(PATH, params, [{ name: "q", label: "Name, address or tag", cls: "w-l" }]));
  const out = h("div", { id: "devices" }, h("p", { class: "muted" }, "Loading…"));
  root.appendChild(out);
  const writable = can("devices:write");
  const q = (params.get("q") || "").toLowerCase();
  const load = () => {
    devices(signal, { fresh: true })
      .then((l) => {
        const rows = l.list.filter((d) => !q || [d.name, d.hostname, d.id, ...(d.addresses || []), ...(d.tags || [])].some((x) => String(x || "").toLowerCase().includes(q)));
        const now = Date.now();
        const columns = [
          { title: "Name", render: (d) => h("span", null, h("strong", null, d.name), d.hostname && d.hostname !== d.name ? h("span", { class: "muted" }, ` (${d.hostname})`) : null) },
          { title: "ID", cls: "mono small", render: (d) => d.id },
          { title: "Addresses", cls: "mono small", render: (d) => (d.addresses || []).join(", ") || "–" },
          { title: "Tags", render: (d) => (d.tags || []).map((t) => badge(t)) },
          { title: "OS", render: (d) => d.os || "–" },
          { title: "Last seen", render: (d) => h("span", { class: "nowrap" }, now - Date.parse(d.lastSeen || 0) < 120e3 ? badge("online", "ok") : badge("silent", "warn"), " ", h("span", { title: d.lastSeen }, fmtAgo(d.lastSeen))) },
          { title: "Logs", render: (d) => (d.noLogsNoSupport ? badge("opted out", "warn") : can("logs:read") ? link("logs", "/logs", { node: d.id }) : "") },
          { title: "Registered", cls: "time", render: (d) => timeEl(d.created) },
        ];
        if (writable) columns.push({ title: "Change", render: (d) => editor(d, load) });
        replace(out, h("p", { class: "muted small" }, `${rows.length} of ${l.list.length} devices`), table({ columns, rows, empty: q ? "No device matches." : "No devices yet: agents appear here when they register." }));
      })
      .catch((e) => {
        if (e.name !== "AbortError") replace(out, errorNotice(e));
      });
  };
  load();
}

export default { path: PATH, title: "Devices", perm: "devices:read", render };
