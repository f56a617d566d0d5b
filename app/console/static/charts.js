// Training curves with the vendored uPlot: loss per step, validation metrics per epoch.

// uPlot is fetched when the first chart is drawn: the other pages load without it.
let uPlotLoaded = null;
function loadUPlot() {
  uPlotLoaded ??= new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = new URL("./vendor/uplot/uPlot.iife.min.js", import.meta.url).href;
    script.onload = resolve;
    script.onerror = () => reject(new Error("the chart library did not load"));
    document.head.append(script);
  });
  return uPlotLoaded;
}

const STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000]; // whole steps and epochs
const COLORS = ["#2563eb", "#db2777", "#059669", "#d97706", "#7c3aed", "#0891b2"];

function size(el) {
  return { width: Math.max(280, el.clientWidth || 560), height: 220 };
}

// A chart in `el` whose data can be replaced; `el.dataset.points` counts the points drawn.
export function lineChart(el, { title, xLabel, series, marker, empty }) {
  let plot = null;
  let markAt = null; // x of the vertical marker (the kept epoch)
  const drawMarker = (u) => {
    if (markAt === null || markAt === undefined) return;
    const x = u.valToPos(markAt, "x", true);
    const ctx = u.ctx;
    ctx.save();
    ctx.strokeStyle = "#16a34a";
    ctx.setLineDash([6, 4]);
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.moveTo(x, u.bbox.top);
    ctx.lineTo(x, u.bbox.top + u.bbox.height);
    ctx.stroke();
    ctx.fillStyle = "#16a34a";
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.font = `${12 * devicePixelRatio}px sans-serif`;
    ctx.fillText(marker, x + 4 * devicePixelRatio, u.bbox.top + 2 * devicePixelRatio);
    ctx.restore();
  };
  let latest = null;
  const draw = () => {
    const [data, mark] = latest;
    markAt = mark;
    if (plot && plot.series.length === data.length) {
      plot.setData(data);
    } else {
      plot?.destroy();
      el.replaceChildren(); // the placeholder
      plot = new window.uPlot({
        title, ...size(el),
        scales: { x: { time: false } },
        axes: [{ label: xLabel, incrs: STEPS }, {}],
        series: [{ label: xLabel }, ...series(data.length - 1).map((s, i) => ({
          stroke: COLORS[i % COLORS.length], width: 2, points: { show: data[0].length < 40 }, ...s }))],
        hooks: { draw: [drawMarker] },
      }, data, el);
    }
    el.dataset.points = String(data[0].length); // drawn
    if (mark !== null) el.dataset.marked = String(mark);
  };
  return {
    async set(data, mark = null) {
      latest = [data, mark];
      if (!data[0].length) {
        el.dataset.points = "0";
        if (!plot) el.replaceChildren(Object.assign(document.createElement("p"), {
          className: "muted chart-empty", textContent: `${title}: ${empty}` }));
        return;
      }
      if (!window.uPlot) await loadUPlot();
      draw();
    },
    resize() { if (plot) plot.setSize(size(el)); },
  };
}

// uPlot's columns from the job's loss curve: [[steps], [losses]].
export const lossData = (curve) => [curve.map((p) => p[0]), curve.map((p) => p[1])];

// A search's trials: [[epochs], [trial a's score per epoch], ...] from its trials table.
export function trialsData(trials) {
  const longest = Math.max(0, ...trials.map((t) => t.curve.length));
  const epochs = Array.from({ length: longest }, (_, i) => i + 1);
  return [epochs, ...trials.map((t) => epochs.map((_, i) => t.curve[i] ?? null))];
}

// [[epochs], [metric a], [metric b], ...] and the metric names, from the per-epoch history.
export function metricsData(history, names) {
  return [history.map((r) => r.epoch), ...names.map((n) => history.map((r) => r[n] ?? null))];
}
