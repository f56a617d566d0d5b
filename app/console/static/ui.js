// Small DOM and formatting helpers shared by the views.

// h("a", {href, class: "x", onclick}, "text", child, [children]) -> element
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "style") el.style.cssText = v;
    else if (k === "value") el.value = v;
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  el.append(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false)
    .map((c) => (c instanceof Node ? c : document.createTextNode(String(c)))));
  return el;
}

export const link = (href, ...children) => h("a", { href, "data-link": true }, ...children);

export function go(path) {
  history.pushState(null, "", path);
  window.dispatchEvent(new PopStateEvent("popstate"));
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

// Local time as 2026-12-02 18:34. Written out by hand: toLocaleString builds a new Intl
// formatter per call, which costs milliseconds each on a list of 50 rows.
const pad = (n) => String(n).padStart(2, "0");
export function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export const num = (x, digits = 4) => (typeof x === "number" ? +x.toFixed(digits) : x);

// The metrics worth a column: numbers other than the epoch and the loss.
export function metricEntries(metrics) {
  return Object.entries(metrics || {}).filter(([k, v]) => typeof v === "number"
    && k !== "epoch" && k !== "train_loss" && !k.endsWith("_loss"));
}

export const badge = (text, kind = text) => h("span", { class: `badge ${kind}` }, text);

// An error as the API explained it: message, code and request id (to quote in a bug report).
export function errorBox(err) {
  const id = err.requestId ? ` (request ${err.requestId})` : "";
  return h("div", { class: "error", role: "alert" },
    h("strong", {}, err.code ? `${err.code}: ` : "Error: "), err.message, h("small", {}, id));
}

// Show a 422's field messages next to the inputs whose data-field names them; returns the
// messages that found no field.
export function showFieldErrors(form, err) {
  for (const old of form.querySelectorAll(".field-error")) old.remove();
  const left = [];
  for (const [field, message] of Object.entries(err.fields || {})) {
    const input = form.querySelector(`[data-field="${CSS.escape(field)}"]`)
      || form.querySelector(`[data-field="${CSS.escape(field.split(".").slice(0, 2).join("."))}"]`);
    if (input) input.closest("label, .field").append(h("span", { class: "field-error" }, message));
    else left.push(`${field}: ${message}`);
  }
  return left;
}

export function loading(text = "Loading…") {
  return h("p", { class: "muted" }, text);
}
