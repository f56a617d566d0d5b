// What differs by task type in the console: the try-it inputs, how an answer is drawn, and the
// training rows' shape. One entry per task type the API lists (GET /task-types).

import { h, num } from "./ui.js";

const textBox = (name, label, rows = 3, value = "") =>
  h("label", { class: "field" }, label, h("textarea", { name, rows, required: name !== "text_pair", value }));

// Probabilities as bars, most probable first.
function scoreBars(scores, chosen) {
  const entries = Object.entries(scores).sort((a, b) => b[1] - a[1]);
  return h("div", { class: "bars" }, entries.map(([label, p]) => h("div", {
    class: `bar${chosen.includes(label) ? " chosen" : ""}`, dataset: { label } },
  h("span", { class: "bar-label" }, label),
  h("span", { class: "bar-track" }, h("span", { class: "bar-fill", style: `width:${(p * 100).toFixed(1)}%` })),
  h("span", { class: "bar-value" }, p.toFixed(3)))));
}

// `text` with the [start, end) spans marked, each with its label.
function marked(text, spans) {
  const out = [];
  let at = 0;
  for (const s of spans.slice().sort((a, b) => a.start - b.start)) {
    if (s.start < at) continue;
    out.push(text.slice(at, s.start), h("mark", { class: "span", dataset: { label: s.label },
      title: `${s.label} ${num(s.score, 3)}` }, text.slice(s.start, s.end),
    h("span", { class: "span-label" }, s.label)));
    at = s.end;
  }
  out.push(text.slice(at));
  return h("p", { class: "marked" }, out);
}

// Words shaded by their attribution (green pushed towards the explained output, red against
// it), one paragraph per text the words come from.
export function shaded(attributions, explanation, texts = {}) {
  if (!attributions?.length) return null;
  const top = Math.max(...attributions.map((a) => Math.abs(a.score)), 1e-9);
  const bySource = new Map();
  for (const a of attributions) {
    if (!bySource.has(a.source)) bySource.set(a.source, []);
    bySource.get(a.source).push(a);
  }
  return h("div", { class: "explained" },
    h("p", { class: "muted" }, "Why: each word shaded by how much it pushed ",
      explanation?.label ? h("strong", {}, explanation.label) : "the output",
      explanation ? ` (${num(explanation.baseline, 3)} with no words → ${num(explanation.output, 3)}; `
        + `integration error ${num(explanation.delta, 4)}, ${explanation.steps} steps)` : ""),
    [...bySource].map(([source, words]) => h("p", { class: "words", dataset: { source } },
      bySource.size > 1 ? h("small", { class: "source" }, source) : null,
      inText(texts[source], words, (a) => h("span", {
        class: `word ${a.score >= 0 ? "for" : "against"}`, dataset: { score: a.score },
        title: `${a.text}: ${a.score.toFixed(4)}`,
        style: `--w:${(Math.abs(a.score) / top).toFixed(3)}` }, a.text)))));
}

// The words in their text, with what lies between them (spaces, line breaks) kept.
function inText(text, words, draw) {
  if (text === undefined) return words.flatMap((w) => [draw(w), " "]);
  const out = [];
  let at = 0;
  for (const w of words) {
    out.push(text.slice(at, w.start), draw(w));
    at = w.end;
  }
  out.push(text.slice(at));
  return out;
}

const pairInputs = () => [textBox("text", "Text"),
  textBox("text_pair", "Second text (only for an adapter trained on pairs)", 2)];
const pairOf = (f) => (f.text_pair ? { text: f.text, text_pair: f.text_pair } : f.text);

export const TASKS = {
  classification: {
    title: "Classification",
    inputs: pairInputs,
    request: pairOf,
    show: (p, f) => [h("p", { class: "answer" }, "Label: ", h("strong", { class: "label" }, p.label),
      ` (${p.score.toFixed(3)})`), scoreBars(p.scores, [p.label]), shaded(p.attributions, p.explanation, f)],
    rows: '{"text": "a gripping, funny film", "label": "positive"}\n'
      + '{"text": "dull and far too long", "label": "negative"}',
    rowHelp: 'JSONL {"text", "text_pair"?, "label"} or CSV with columns text,[text_pair,]label.',
    labels: true,
  },
  multi_label_classification: {
    title: "Multi-label classification",
    inputs: pairInputs,
    request: pairOf,
    show: (p, f) => [h("p", { class: "answer" }, "Labels: ",
      h("strong", { class: "label" }, p.labels.join(", ") || "none")), scoreBars(p.scores, p.labels),
    shaded(p.attributions, p.explanation, f)],
    rows: '{"text": "cheap pills, click now", "labels": ["spam", "pharma"]}\n'
      + '{"text": "lunch at noon?", "labels": []}',
    rowHelp: 'JSONL {"text", "text_pair"?, "labels": [names]} (an empty list: no label applies).',
    labels: true,
  },
  regression: {
    title: "Regression",
    inputs: pairInputs,
    request: pairOf,
    show: (p, f) => [h("p", { class: "answer" }, "Value: ", h("strong", { class: "label" }, num(p.value))),
      shaded(p.attributions, p.explanation, f)],
    rows: '{"text": "A man is playing a guitar.", "text_pair": "A man plays guitar.", "label": 4.8}',
    rowHelp: 'JSONL {"text", "text_pair"?, "label": number} or CSV text,[text_pair,]label.',
    labels: false,
  },
  token_classification: {
    title: "Token classification (NER)",
    inputs: () => [textBox("text", "Text", 4)],
    request: (f) => f.text,
    show: (p, f) => [marked(f.text, p.entities), p.entities.length
      ? h("ul", { class: "entities" }, p.entities.map((e) => h("li", {}, h("strong", {}, e.label),
        ` ${e.text} (${e.score.toFixed(3)})`, shaded(e.attributions, e.explanation, f))))
      : h("p", { class: "muted" }, "No entity found.")],
    rows: '{"tokens": ["Ada", "Lovelace", "lived", "in", "London"], "tags": ["B-PER", "I-PER", "O", "O", "B-LOC"]}\n'
      + '{"text": "Grace Hopper worked at Harvard", "entities": [{"start": 0, "end": 12, "label": "PER"}]}',
    rowHelp: 'JSONL {"tokens", "tags"} (BIO tags) or {"text", "entities": [{start, end, label}]}.',
    labels: true,
  },
  question_answering: {
    title: "Question answering",
    inputs: () => [textBox("question", "Question", 1), textBox("context", "Context", 6)],
    request: (f) => ({ question: f.question, context: f.context }),
    show: (p, f) => [h("p", { class: "answer" }, "Answer: ", h("strong", { class: "label" }, p.answer || "(none)"),
      ` (${p.score.toFixed(3)})`), marked(f.context, p.answer ? [{ ...p, label: "answer" }] : []),
    shaded(p.attributions, p.explanation, f)],
    rows: '{"question": "Who wrote it?", "context": "It was written by Ada.", "answers": {"text": ["Ada"], "answer_start": [18]}}',
    rowHelp: 'JSONL {"question", "context", "answers": {"text": [...], "answer_start": [...]}} (SQuAD).',
    labels: false,
  },
};

export const taskOf = (type) => TASKS[type] || TASKS.classification;
