// Jobs: the list with status and progress, and one job's page with live curves over SSE.

import { api, session, streamEvents } from "../api.js";
import { lineChart, lossData, metricsData, trialsData } from "../charts.js";
import { badge, duration, errorBox, h, link, loading, metricEntries, num, when } from "../ui.js";

const ACTIVE = ["queued", "running"];
const LIST_REFRESH_MS = 2000;

const progressBar = (fraction) => h("span", { class: "progress", title: `${(fraction * 100).toFixed(0)}%` },
  h("span", { style: `width:${(fraction * 100).toFixed(1)}%` }));

export async function jobList(page, { query, signal }) {
  const status = query.get("status") || "";
  const filter = h("select", { "aria-label": "Status", onchange: (e) => {
    history.replaceState(null, "", e.target.value ? `/ui/jobs?status=${e.target.value}` : "/ui/jobs");
    draw();
  } }, ["", "queued", "running", "succeeded", "failed", "cancelled"].map((s) =>
    h("option", { value: s, selected: s === status }, s || "every status")));
  const body = h("div", {}, loading());
  page.append(h("div", { class: "page-head" }, h("h1", {}, "Training jobs"), filter), body);
  let timer = null;
  const draw = async () => {
    clearTimeout(timer);
    const { jobs } = await api("/jobs", { query: { status: filter.value, limit: 200 }, signal });
    body.replaceChildren(jobs.length ? h("table", { class: "list" },
      h("thead", {}, h("tr", {}, ["Adapter", "Task type", "Status", "Progress", "Created", "Took"]
        .map((t) => h("th", {}, t)))),
      h("tbody", {}, jobs.map((j) => h("tr", { dataset: { job: j.job_id } },
        h("td", {}, link(`/ui/jobs/${j.job_id}`, j.name)),
        h("td", {}, j.task_type),
        h("td", {}, badge(j.status)),
        h("td", {}, progressBar(j.status === "succeeded" ? 1 : j.progress?.fraction || 0),
          j.status === "running" && j.progress ? h("small", {}, ` epoch ${j.progress.epoch}/${j.progress.epochs}`) : null),
        h("td", {}, when(j.created_at)),
        h("td", {}, j.finished_at && j.started_at ? duration((new Date(j.finished_at) - new Date(j.started_at)) / 1000) : ""))))
    ) : h("p", { class: "muted" }, "No training jobs", filter.value ? ` with status ${filter.value}.` : " yet."));
    if (jobs.some((j) => ACTIVE.includes(j.status)) && !signal.aborted) {
      timer = setTimeout(() => draw().catch(() => {}), LIST_REFRESH_MS);
    }
  };
  signal.addEventListener("abort", () => clearTimeout(timer));
  await draw();
}

export async function jobDetail(page, { params: [id], signal }) {
  const head = h("div", { class: "page-head" });
  const status = h("div", { class: "status-line" });
  const failure = h("div");
  const lossEl = h("div", { class: "chart", id: "loss-chart" });
  const metricsEl = h("div", { class: "chart", id: "metrics-chart" });
  const result = h("div");
  const trialsEl = h("div");
  page.append(head, status, failure,
    h("div", { class: "charts" }, lossEl, metricsEl), trialsEl, result);
  const first = await api(`/jobs/${id}`, { signal });
  const searching = Boolean(first.config?.search);
  const loss = lineChart(lossEl, { title: "Training loss", xLabel: "step",
    series: () => [{ label: "loss" }], empty: "drawn from the first steps on." });
  let names = null; // the metric names of the first epoch fix the chart's series
  let trialLabels = []; // a search: one series per trial, added as trials start
  const metrics = searching
    ? lineChart(metricsEl, { title: "Trials: score per epoch", xLabel: "epoch",
      series: () => trialLabels.map((label) => ({ label })),
      empty: "drawn after each trial's epochs." })
    : lineChart(metricsEl, { title: "Validation metrics", xLabel: "epoch",
      marker: "kept", series: () => names.map((n) => ({ label: n })),
      empty: "drawn after each epoch." });
  const onResize = () => { loss.resize(); metrics.resize(); };
  window.addEventListener("resize", onResize);
  signal.addEventListener("abort", () => window.removeEventListener("resize", onResize));

  const show = (job) => {
    drawHead(head, job, failure);
    drawStatus(status, job);
    failure.replaceChildren(job.status === "failed" && job.error
      ? h("pre", { class: "error", role: "alert" }, job.error) : "");
    loss.set(lossData(job.loss_curve));
    if (searching) {
      const trials = job.search?.trials || [];
      trialLabels = trials.map((t) => `trial ${t.number}`);
      metrics.set(trialsData(trials));
      trialsEl.replaceChildren(job.search ? drawTrials(job.search) : "");
    } else {
      names ??= job.metrics.length ? metricEntries(job.metrics[0]).map(([k]) => k) : null;
      metrics.set(names ? metricsData(job.metrics, names) : [[]], job.result?.best_epoch ?? null);
    }
    result.replaceChildren(job.result ? drawResult(job) : "");
    page.dataset.status = job.status;
  };
  show(first);
  // The stream sends the job whenever it changes, then `end`; a finished job sends itself once.
  streamEvents(`/jobs/${id}/events`, (name, data) => { if (name === "progress") show(data); }, signal)
    .catch((err) => { if (err.name !== "AbortError") failure.replaceChildren(errorBox(err)); });
}

function drawHead(head, job, failure) {
  const cancel = async () => {
    if (!confirm(`Cancel the training of “${job.name}”? Nothing will be stored.`)) return;
    try { await api(`/jobs/${job.job_id}`, { method: "DELETE" }); } catch (err) { failure.replaceChildren(errorBox(err)); }
  };
  head.replaceChildren(
    h("h1", {}, "Training ", job.name, " ", badge(job.status)),
    h("div", { class: "actions" },
      job.adapter ? link(`/ui/try/${job.adapter.name}?version=${job.adapter.version}`, "Try it") : null,
      job.adapter ? link(`/ui/adapters/${job.adapter.name}?version=${job.adapter.version}`, `Adapter v${job.adapter.version}`) : null,
      session.canWrite && ACTIVE.includes(job.status) && !job.cancel_requested
        ? h("button", { class: "danger", onclick: cancel }, "Cancel") : null));
}

function drawStatus(el, job) {
  const p = job.progress;
  const fraction = job.status === "succeeded" ? 1 : p?.fraction || 0;
  el.replaceChildren(...[
    progressBar(fraction),
    h("span", {}, `${(fraction * 100).toFixed(0)}%`),
    p ? h("span", {}, `epoch ${p.epoch}/${p.epochs} · step ${p.step}/${p.total_steps} · loss ${num(p.train_loss)}`) : null,
    job.status === "running" && p?.eta_seconds != null ? h("span", { class: "eta" }, `ETA ${duration(p.eta_seconds)}`) : null,
    job.cancel_requested && ACTIVE.includes(job.status) ? h("span", {}, "cancelling…") : null,
    h("span", { class: "muted" }, `${job.task_type} · ${job.train_rows} training rows, ${job.validation_rows || "a share"} for validation · created ${when(job.created_at)} · job ${job.job_id}`),
  ].filter(Boolean));
}

// What a trial tried, in a few words: "houlsby /16", "lora r8".
function design(c) {
  return c.method === "lora" ? `lora r${c.r}` : `${c.placement} /${num(c.reduction_factor, 2)}`;
}

function drawTrials(search) {
  const head = ["Trial", "Design", "Learning rate", "Epochs", "Head", "State", "Score", "Cost", "Parameters", "Seconds"];
  return h("section", { class: "trials" },
    h("h2", {}, `Search: ${search.phase}`),
    h("p", { class: "muted" }, `${search.trials.length} of at most ${search.trials_requested} trials · `
      + `${duration(search.elapsed_seconds)} of ${duration(search.budget_s)} · objective ${search.objective}`),
    h("table", { class: "list" },
      h("thead", {}, h("tr", {}, head.map((t) => h("th", {}, t)))),
      h("tbody", {}, search.trials.map((t) => h("tr", {
        dataset: { trial: t.number }, class: t.number === search.winner ? "winner" : "" },
      h("td", {}, String(t.number), t.number === search.winner ? " ✓" : ""),
      h("td", {}, design(t.config)),
      h("td", {}, t.config.learning_rate.toExponential(1)),
      h("td", {}, String(t.config.epochs)),
      h("td", {}, t.config.head_layers ? `${t.config.head_layers} layer${t.config.head_layers > 1 ? "s" : ""}` : ""),
      h("td", {}, badge(t.state), t.stopped_by ? h("small", {}, ` (${t.stopped_by})`) : ""),
      h("td", {}, t.score != null ? String(num(t.score)) : ""),
      h("td", {}, `${num(t.relative_cost, 3)}×`),
      h("td", {}, t.trainable_parameters.toLocaleString("en")),
      h("td", {}, duration(t.seconds)))))),
    search.why ? h("p", { class: "why" }, `Winner: ${search.why}.`) : null);
}

function drawResult(job) {
  const r = job.result;
  const kept = metricEntries(r.metrics || {}).map(([k, v]) => `${k} ${num(v)}`).join(" · ");
  return h("p", { class: "result" }, `Kept epoch ${r.best_epoch}`, kept ? ` (${kept})` : "",
    r.stop_reason ? `; stopped: ${r.stop_reason}` : "", ".");
}
