// Train: rows from a file or pasted, the task type, the main config fields with their defaults.

import { api, session } from "../api.js";
import { errorBox, go, h, showFieldErrors } from "../ui.js";
import { TASKS, taskOf } from "../tasks.js";

// The config fields the form offers ([name, label, kind, methods it applies to]); the API
// takes every other TrainConfig field too (see /docs).
const CONFIG = [
  ["epochs", "Epochs", "int"],
  ["learning_rate", "Learning rate", "float"],
  ["batch_size", "Batch size", "int"],
  ["max_seq_length", "Max tokens per input", "int"],
  ["reduction_factor", "Bottleneck reduction factor", "float", "bottleneck"],
  ["r", "LoRA rank r", "int", "lora"],
  ["alpha", "LoRA alpha", "float", "lora"],
  ["seed", "Seed", "int"],
  ["max_train_seconds", "Time limit (seconds)", "float"],
];

const field = (label, input, help) => h("label", { class: "field" }, label, input,
  help ? h("small", { class: "help" }, help) : null);

export async function trainPage(page, { signal }) {
  page.append(h("h1", {}, "Train an adapter"));
  if (!session.canWrite) {
    page.append(h("p", { class: "error", role: "alert" }, "Training needs an admin key; the key "
      + `in use has the ${session.scope} scope. Adapters, jobs and the try-it pages stay open to it.`));
    return;
  }
  const { task_types: types } = await api("/task-types", { signal });
  const defaults = Object.fromEntries(types.map((t) => [t.name, t.training_defaults]));
  const taskType = h("select", { name: "task_type", "data-field": "task_type" },
    types.map((t) => h("option", { value: t.name }, TASKS[t.name]?.title || t.name)));
  const method = h("select", { name: "method", "data-field": "config.method" },
    h("option", { value: "bottleneck" }, "Bottleneck adapter"), h("option", { value: "lora" }, "LoRA"));
  const rowsHelp = h("small", { class: "help" });
  const pasted = h("textarea", { name: "pasted", rows: 6, "data-field": "train",
    placeholder: "…or paste rows here (JSONL or CSV)" });
  const labelsField = field("Labels (optional, comma-separated; default: those in the rows)",
    h("input", { name: "labels", "data-field": "labels" }));
  const configInputs = CONFIG.map(([name, label, kind, only]) => {
    const input = h("input", { name, type: "number", step: kind === "int" ? 1 : "any",
      "data-field": `config.${name}` });
    return { name, kind, only, input, wrap: field(label, input) };
  });
  const formError = h("div");

  const refresh = () => { // what depends on the task type and the method
    const task = taskOf(taskType.value);
    rowsHelp.textContent = task.rowHelp;
    pasted.placeholder = `…or paste rows here, e.g.\n${task.rows}`;
    labelsField.hidden = !task.labels;
    for (const c of configInputs) {
      const d = defaults[taskType.value][c.name];
      c.input.placeholder = d === null || d === undefined ? "none" : `default ${d}`;
      c.wrap.hidden = Boolean(c.only) && c.only !== method.value;
    }
  };
  taskType.addEventListener("change", refresh);
  method.addEventListener("change", refresh);

  const form = h("form", { class: "train", onsubmit: async (event) => {
    event.preventDefault();
    formError.replaceChildren();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const job = await api("/adapters", { method: "POST", form: formData(form, configInputs) });
      go(`/ui/jobs/${job.job_id}`);
    } catch (err) {
      const left = showFieldErrors(form, withFieldOf(err));
      formError.replaceChildren(err.details.length && !left.length
        ? h("p", { class: "error", role: "alert" }, "Training was not started: see the fields marked above.")
        : errorBox(left.length ? { ...err, message: left.join("; ") } : err));
    } finally {
      button.disabled = false;
    }
  } },
  h("div", { class: "grid" },
    field("Adapter name", h("input", { name: "name", required: true, pattern: "[a-z0-9][a-z0-9_\\-]{0,63}",
      "data-field": "name", placeholder: "e.g. sentiment" }), "Lower case letters, digits, - and _."),
    field("Task type", taskType)),
  h("div", { class: "field rows" }, h("span", {}, "Training rows"),
    h("input", { type: "file", name: "file", accept: ".jsonl,.json,.ndjson,.csv,.tsv", "data-field": "train" }),
    pasted, rowsHelp),
  field("Validation rows (optional file; default: a share of the training rows)",
    h("input", { type: "file", name: "validation_file", accept: ".jsonl,.json,.ndjson,.csv,.tsv",
      "data-field": "validation" })),
  labelsField,
  field("Description (optional)", h("input", { name: "description", "data-field": "description" })),
  h("fieldset", {}, h("legend", {}, "Configuration (empty fields take the default shown)"),
    h("div", { class: "grid" }, field("Method", method), configInputs.map((c) => c.wrap))),
  formError,
  h("div", { class: "actions" }, h("button", { type: "submit" }, "Start training")));
  page.append(form);
  refresh();
}

function formData(form, configInputs) {
  const data = new FormData();
  const value = (name) => form.elements[name].value.trim();
  data.set("name", value("name"));
  data.set("task_type", value("task_type"));
  if (!form.elements.labels.closest("label").hidden && value("labels")) data.set("labels", value("labels"));
  if (value("description")) data.set("description", value("description"));
  const config = { method: value("method") };
  for (const c of configInputs) {
    const raw = c.input.value.trim();
    if (raw === "" || c.wrap.hidden) continue;
    config[c.name] = c.kind === "int" ? Number.parseInt(raw, 10) : Number.parseFloat(raw);
  }
  data.set("config", JSON.stringify(config));
  const file = form.elements.file.files[0];
  // Pasted rows travel as a file without an extension: the API tells JSONL from CSV by content.
  if (file) data.set("file", file);
  else if (value("pasted")) data.set("file", new Blob([value("pasted")], { type: "text/plain" }), "pasted-rows");
  const validation = form.elements.validation_file.files[0];
  if (validation) data.set("validation_file", validation);
  return data;
}

// Errors about the rows arrive as a message ("train file line 3 ..."): give them their field.
function withFieldOf(err) {
  if (err.details.length) return err;
  const m = /^(train|validation)\b/.exec(err.message)
    || (/multipart training needs the rows/.test(err.message) ? [null, "train"] : null);
  if (!m) return err;
  err.details = [{ field: m[1], message: err.message }];
  return err;
}
