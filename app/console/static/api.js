// Calls to the service's API: the key from sessionStorage as a Bearer token, errors as ApiError.

const KEY = "adapter-serve.key";

export const session = {
  get key() { return sessionStorage.getItem(KEY) || ""; },
  set key(value) { value ? sessionStorage.setItem(KEY, value) : sessionStorage.removeItem(KEY); },
  scope: null,        // "admin" | "predict" | null (no key yet, keys required)
  keysRequired: false,
  get canWrite() { return this.scope === "admin"; },
};

export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || "http_error";
    this.details = Array.isArray(e.details) ? e.details : [];
    this.requestId = e.request_id || null;
  }
  // {field: message} of a 422's details ("config.epochs" -> message).
  get fields() {
    return Object.fromEntries(this.details.filter((d) => d.field).map((d) => [d.field, d.message]));
  }
}

function headers(extra = {}) {
  const h = { ...extra };
  if (session.key) h.Authorization = `Bearer ${session.key}`;
  return h;
}

async function fail(res) {
  let body = null;
  try { body = await res.json(); } catch { /* not JSON: the status says enough */ }
  throw new ApiError(res.status, body);
}

// api("/adapters", {query: {limit: 50}}); api("/predict/x", {method: "POST", json: {...}});
// api("/adapters", {method: "POST", form: formData}).
export async function api(path, { method = "GET", json, form, query, signal } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  }
  const init = { method, signal, headers: headers(json ? { "Content-Type": "application/json" } : {}) };
  if (json) init.body = JSON.stringify(json);
  if (form) init.body = form;
  const res = await fetch(url, init);
  if (!res.ok) await fail(res);
  return res.status === 204 ? null : res.json();
}

// Server-sent events over fetch (EventSource cannot send an Authorization header).
// onEvent(name, data) for each event; resolves when the stream ends or `signal` aborts it.
export async function streamEvents(path, onEvent, signal) {
  const res = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal });
  if (!res.ok) await fail(res);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

// Save a file the API answers with (a link cannot carry the key, so fetch it and hand the
// browser a blob).
export async function download(path, query, fallbackName) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query || {})) if (v) url.searchParams.set(k, v);
  const res = await fetch(url, { headers: headers() });
  if (!res.ok) await fail(res);
  const match = /filename="?([^";]+)"?/.exec(res.headers.get("Content-Disposition") || "");
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await res.blob());
  link.download = match ? match[1] : fallbackName;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}
