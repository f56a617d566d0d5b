// Try it: inputs fitting the adapter's task type, its answer drawn, the latency and version.

import { api } from "../api.js";
import { errorBox, go, h, link } from "../ui.js";
import { taskOf } from "../tasks.js";

export async function tryPage(page, { params: [name], query, signal }) {
  const version = query.get("version") || undefined;
  const a = await api(`/adapters/${name}`, { query: { version }, signal });
  const task = taskOf(a.task_type);
  const output = h("div", { class: "output", "aria-live": "polite" });
  const versions = h("select", { name: "version", "aria-label": "Version",
    onchange: (e) => go(`/ui/try/${name}?version=${e.target.value}`) },
  a.versions.slice().reverse().map((v) => h("option", { value: v, selected: v === a.version }, `v${v}`)));
  const form = h("form", { class: "try", onsubmit: async (event) => {
    event.preventDefault();
    const fields = Object.fromEntries(new FormData(form));
    const explain = fields.explain === "on";
    delete fields.explain;
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    const started = performance.now();
    try {
      const answer = await api(`/predict/${name}`, { method: "POST",
        json: { inputs: [task.request(fields)], version: a.version, explain } });
      const ms = performance.now() - started;
      output.replaceChildren(...task.show(answer.predictions[0], fields),
        h("p", { class: "muted meta" }, `Answered by ${name} v${answer.version} in ${ms.toFixed(0)} ms`));
    } catch (err) {
      output.replaceChildren(errorBox(err));
    } finally {
      button.disabled = false;
    }
  } }, task.inputs(), h("div", { class: "actions" }, h("button", { type: "submit" }, "Predict"),
    h("label", { class: "check", title: "Integrated gradients: slower, one pass per 16 steps" },
      h("input", { type: "checkbox", name: "explain" }), " Explain (shade the words that drove it)")));
  page.append(
    h("div", { class: "page-head" }, h("h1", {}, "Try ", link(`/ui/adapters/${name}`, name), " ", versions),
      h("span", { class: "muted" }, task.title, a.labels.length ? ` · ${a.labels.join(", ")}` : "")),
    form, output);
  form.querySelector("textarea")?.focus();
}
