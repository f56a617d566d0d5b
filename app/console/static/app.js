// The console's shell: the key field, the router, and one view per URL.

import { api, session } from "./api.js";
import { errorBox, h } from "./ui.js";

// [URL pattern, nav entry, view module, its function]: a view's module is fetched when its page
// is first opened, so a visit loads only what it shows.
const ROUTES = [
  [/^\/(?:ui\/?)?$/, "adapters", "adapters", "adapterList"],
  [/^\/ui\/adapters\/?$/, "adapters", "adapters", "adapterList"],
  [/^\/ui\/adapters\/([^/]+)$/, "adapters", "adapters", "adapterDetail"],
  [/^\/ui\/try\/([^/]+)$/, "adapters", "try", "tryPage"],
  [/^\/ui\/train\/?$/, "train", "train", "trainPage"],
  [/^\/ui\/jobs\/?$/, "jobs", "jobs", "jobList"],
  [/^\/ui\/jobs\/([^/]+)$/, "jobs", "jobs", "jobDetail"],
];

const view = document.getElementById("view");
let current = null; // AbortController of the view on screen: its streams and timers stop with it

async function render() {
  current?.abort();
  current = new AbortController();
  const signal = current.signal;
  const path = location.pathname;
  const found = ROUTES.find(([re]) => re.test(path));
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", Boolean(found) && a.dataset.nav === found[1]);
  }
  if (!found) {
    view.replaceChildren(h("h1", {}, "Not found"), h("p", {}, `No page at ${path}.`));
  } else if (session.keysRequired && !session.scope) {
    view.replaceChildren(h("h1", {}, "An API key is needed"),
      h("p", {}, "This service was started with API keys. Enter one above: a predict key shows "
        + "adapters, jobs and the try-it pages; an admin key can also train, cancel and delete."));
  } else {
    const params = path.match(found[0]).slice(1).map(decodeURIComponent);
    const page = h("section", { class: "page" });
    view.replaceChildren(page);
    try {
      const module = await import(`./views/${found[2]}.js`);
      await module[found[3]](page, { params, query: new URLSearchParams(location.search), signal });
    } catch (err) {
      if (err.name === "AbortError") return;
      page.append(errorBox(err));
    }
  }
  if (!signal.aborted) { // tests and timings wait for this
    document.body.dataset.ready = path;
    document.body.dataset.readyAt = performance.now().toFixed(1);
  }
}

async function identify() {
  const scope = document.getElementById("scope");
  try {
    // The server says in the page whether it wants keys: without keys every call is open, and
    // the first view needs no /whoami before it asks for its data.
    const me = document.body.dataset.keys === "off" ? { keys_required: false, scope: "admin" }
      : await api("/whoami");
    session.keysRequired = me.keys_required;
    session.scope = me.scope;
  } catch (err) {
    session.keysRequired = true;
    session.scope = null;
    scope.replaceChildren(h("span", { class: "badge failed", title: err.message }, "key refused"));
    return;
  }
  document.body.dataset.scope = session.scope || "none";
  scope.replaceChildren(!session.keysRequired ? h("span", { class: "muted" }, "no keys required")
    : session.scope ? h("span", { class: `badge ${session.scope}` }, `${session.scope} key`)
      : h("span", { class: "muted" }, "no key"));
  document.getElementById("key-form").hidden = !session.keysRequired;
}

document.getElementById("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("key-input");
  session.key = input.value.trim();
  input.value = "";
  await identify();
  await render();
});
document.getElementById("key-forget").addEventListener("click", async () => {
  session.key = "";
  await identify();
  await render();
});

// Links inside the page change the view without reloading it.
document.addEventListener("click", (event) => {
  const a = event.target.closest("a[data-link]");
  if (!a || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
  event.preventDefault();
  if (a.getAttribute("href") !== location.pathname + location.search) {
    history.pushState(null, "", a.getAttribute("href"));
  }
  render();
});
window.addEventListener("popstate", render);

// The first view's module downloads while the key is checked.
const first = ROUTES.find(([re]) => re.test(location.pathname));
if (first) import(`./views/${first[2]}.js`).catch(() => {});
await identify();
await render();
