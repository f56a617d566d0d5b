// Adapters: the list (search, pages from the API's cursor) and one adapter's page.

import { api, download, session } from "../api.js";
import { badge, bytes, errorBox, go, h, link, loading, metricEntries, num, when } from "../ui.js";

const PAGE = 50;

function metricsText(metrics) {
  return metricEntries(metrics).slice(0, 3).map(([k, v]) => `${k} ${num(v, 3)}`).join(" · ");
}

export async function adapterList(page, { query, signal }) {
  const contains = query.get("q") || "";
  const cursor = query.get("cursor") || "";
  // Cursors of the pages before this one ("~": the first page), so Previous needs no API help.
  const back = (query.get("back") || "").split(",").filter(Boolean).map((c) => (c === "~" ? "" : c));
  const search = h("input", { type: "search", name: "q", value: contains, placeholder: "Search names",
    "aria-label": "Search adapters", pattern: "[a-z0-9_\\-]*" });
  page.append(
    h("div", { class: "page-head" }, h("h1", {}, "Adapters"),
      session.canWrite ? link("/ui/train", "Train a new adapter") : null),
    h("form", { class: "search", onsubmit: (e) => {
      e.preventDefault();
      const q = search.value.trim().toLowerCase();
      go(q ? `/ui/adapters?q=${encodeURIComponent(q)}` : "/ui/adapters");
    } }, search, h("button", { type: "submit" }, "Search")));
  const body = h("div", {}, loading());
  page.append(body);
  const list = await api("/adapters", { query: { limit: PAGE, cursor, contains }, signal });
  if (!list.adapters.length) {
    body.replaceChildren(h("p", { class: "muted" }, contains ? `No adapter name holds “${contains}”.`
      : "No adapters yet. Train one, or import one with PUT /adapters/{name}."));
    return;
  }
  const rows = list.adapters.map((a) => h("tr", { dataset: { name: a.name } },
    h("td", {}, link(`/ui/adapters/${a.name}`, a.name)),
    h("td", {}, a.task_type),
    h("td", { class: "labels", title: a.labels.join(", ") }, a.labels.slice(0, 6).join(", "),
      a.labels.length > 6 ? ` +${a.labels.length - 6}` : ""),
    h("td", { class: "num" }, a.versions.length > 1 ? `v${a.latest_version} (${a.versions.length})`
      : `v${a.latest_version}`),
    h("td", { class: "num" }, bytes(a.size_bytes)),
    h("td", {}, metricsText(a.metrics)),
    h("td", {}, when(a.created_at)),
    h("td", {}, a.tier === "device" ? badge("resident", "succeeded") : badge(a.tier, "muted")),
    h("td", {}, link(`/ui/try/${a.name}`, "Try it"))));
  const pageQuery = (c, b) => {
    const p = new URLSearchParams();
    if (contains) p.set("q", contains);
    if (c) p.set("cursor", c);
    if (b.length) p.set("back", b.map((x) => x || "~").join(","));
    return `/ui/adapters${p.size ? `?${p}` : ""}`;
  };
  body.replaceChildren(
    h("table", { class: "list" },
      h("thead", {}, h("tr", {}, ["Name", "Task type", "Labels", "Version", "Size",
        "Metrics (stored epoch)", "Created", "Held", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, rows)),
    h("div", { class: "pager" },
      cursor ? link(pageQuery(back.at(-1), back.slice(0, -1)), "← Previous") : h("span"),
      list.next_cursor ? link(pageQuery(list.next_cursor, [...back, cursor]), "Next →") : h("span")));
}

export async function adapterDetail(page, { params: [name], query, signal }) {
  const version = query.get("version") || undefined;
  const a = await api(`/adapters/${name}`, { query: { version }, signal });
  const method = a.adapter_config.method;
  const versions = h("select", { "aria-label": "Version", onchange: (e) =>
    go(`/ui/adapters/${name}?version=${e.target.value}`) },
  a.versions.slice().reverse().map((v) => h("option", { value: v, selected: v === a.version }, `v${v}`)));
  const failure = h("div");
  const fetchFile = (format, fallback) => download(`/adapters/${name}/download`,
    { version: a.version, format }, fallback).catch((err) => failure.replaceChildren(errorBox(err)));
  const remove = async () => {
    const what = a.versions.length > 1 ? `every version (${a.versions.join(", ")}) of “${name}”`
      : `“${name}”`;
    if (!confirm(`Delete ${what}? This cannot be undone.`)) return;
    try {
      await api(`/adapters/${name}`, { method: "DELETE" });
      go("/ui/adapters");
    } catch (err) { failure.replaceChildren(errorBox(err)); }
  };
  const v = a.metrics.validation || {};
  page.append(
    h("div", { class: "page-head" }, h("h1", {}, name, " ", versions),
      h("div", { class: "actions" },
        link(`/ui/try/${name}?version=${a.version}`, "Try it"),
        h("button", { onclick: () => fetchFile("adapter-serve", `${name}.safetensors`) }, "Download"),
        h("button", { onclick: () => fetchFile(method === "lora" ? "peft" : "adapterhub", `${name}.zip`) },
          method === "lora" ? "Download for PEFT" : "Download for AdapterHub"),
        session.canWrite ? h("button", { class: "danger", onclick: remove }, "Delete") : null)),
    failure,
    a.description ? h("p", {}, a.description) : null,
    h("dl", { class: "facts" },
      fact("Task type", a.task_type),
      fact("Labels", a.labels.join(", ") || "—"),
      fact("Method", method === "lora" ? `LoRA r=${a.adapter_config.r} on ${a.adapter_config.target_modules.join(", ")}`
        : `bottleneck (${a.adapter_config.placement}, reduction ${a.adapter_config.reduction_factor})`),
      fact("Held", a.tier === "device" ? "resident on the device" : `${a.tier} (loaded on first use)`),
      fact("Created", when(a.created_at)),
      fact("Base model", `${a.base_model.name} (${a.base_model.model_type}, ${a.base_model.num_layers} layers, hidden ${a.base_model.hidden_size})`),
      fact("Base fingerprint", h("code", {}, a.base_model.fingerprint)),
      fact("Weights SHA-256", h("code", {}, a.weights_sha256)),
      a.metrics.best_epoch ? fact("Stored epoch", `${a.metrics.best_epoch} of ${(a.metrics.history || []).length} (${a.metrics.stop_reason || ""})`) : null,
      metricEntries(v).length ? fact("Validation", metricEntries(v).map(([k, x]) => `${k} ${num(x)}`).join(" · ")) : null,
      a.metrics.job_id ? fact("Trained by", link(`/ui/jobs/${a.metrics.job_id}`, `job ${a.metrics.job_id.slice(0, 8)}`)) : null,
      a.source && a.source.library ? fact("Imported from", a.source.library) : null),
    a.warnings.length ? h("ul", { class: "warnings" }, a.warnings.map((w) => h("li", {}, w))) : null,
    h("details", {}, h("summary", {}, "Adapter and head configuration"),
      h("pre", {}, JSON.stringify({ adapter_config: a.adapter_config, head_config: a.head_config }, null, 2))));
}

function fact(term, value) {
  return [h("dt", {}, term), h("dd", {}, value)];
}
