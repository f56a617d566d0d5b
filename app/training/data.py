"""Training data: parse JSONL/CSV or inline rows, check every row, infer labels, split for validation."""

from __future__ import annotations

import csv
import io
import json
import math
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from app.errors import InvalidInputError

TASK_TYPES = ("classification", "regression", "token_classification", "question_answering")
WORD_RE = re.compile(r"\w+|[^\w\s]")


@dataclass
class Examples:
    """Rows ready for training: texts, optional pairs, and targets (class index or value)."""

    texts: list[str]
    pairs: list[str | None]
    targets: list[Any]  # per row: class index, value, or (NER) a tag index per word
    words: list[list[str]] | None = None  # NER: the words the tags belong to

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: list[int]) -> Examples:
        return Examples([self.texts[i] for i in idx], [self.pairs[i] for i in idx],
                        [self.targets[i] for i in idx],
                        None if self.words is None else [self.words[i] for i in idx])


@dataclass
class TrainingData:
    task_type: str
    labels: list[str]  # classification: index -> name; regression: empty
    train: Examples
    validation: Examples
    validation_given: bool


def parse_file(data: bytes, filename: str | None, what: str = "train") -> list[dict[str, Any]]:
    """Rows of a JSONL (one object a line) or CSV (a header with text, text_pair, label) file."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{what} file is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    name = (filename or "").lower()
    is_csv = name.endswith((".csv", ".tsv")) or (
        not name.endswith((".jsonl", ".json", ".ndjson")) and not text.lstrip().startswith("{"))
    rows = _parse_csv(text, what, "\t" if name.endswith(".tsv") else ",") if is_csv \
        else _parse_jsonl(text, what)
    if not rows:
        raise InvalidInputError(f"{what} file holds no rows")
    return rows


def _parse_jsonl(text: str, what: str) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{what} file line {n} is not valid JSON: {exc.msg}") from exc
        if not isinstance(row, dict):
            raise InvalidInputError(f"{what} file line {n} is not a JSON object")
        rows.append(row)
    return rows


def _parse_csv(text: str, what: str, delimiter: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    fields = reader.fieldnames or []
    if "text" not in fields or "label" not in fields:
        raise InvalidInputError(
            f"{what} file is neither JSONL nor CSV with a header naming 'text' and 'label' "
            f"(found columns {fields[:6]})")
    try:
        rows = [dict(r) for r in reader]
    except csv.Error as exc:
        raise InvalidInputError(f"{what} file is not valid CSV: {exc}") from exc
    for r in rows:
        if not r.get("text_pair"):
            r.pop("text_pair", None)
        r.pop(None, None)  # extra cells without a header
    return rows


def _check_rows(rows: list[Any], what: str, max_chars: int) -> tuple[list[str], list[str | None],
                                                                     list[Any]]:
    texts, pairs, labels = [], [], []
    for i, row in enumerate(rows):
        where = f"{what}[{i}]"
        if not isinstance(row, dict):
            raise InvalidInputError(f"{where} must be an object with text and label")
        if "label" not in row or row["label"] is None:
            raise InvalidInputError(f"{where} has no 'label'")
        for key in ("text", "text_pair"):
            value = row.get(key)
            if key == "text_pair" and value is None:
                continue
            if not isinstance(value, str):
                got = "nothing" if value is None else type(value).__name__
                raise InvalidInputError(f"{where}.{key} must be a string, got {got}")
            if not value.strip():
                raise InvalidInputError(f"{where}.{key} is empty")
            if len(value) > max_chars:
                raise InvalidInputError(f"{where}.{key} has {len(value)} characters; the limit "
                                        f"is {max_chars}")
        texts.append(row["text"])
        pairs.append(row.get("text_pair"))
        labels.append(row["label"])
    return texts, pairs, labels


def _ner_rows(rows: list[Any], what: str, max_chars: int) -> tuple[list[list[str]], list[list[str]]]:
    """{"tokens", "tags"} rows, or {"text", "entities": [{start, end, label}]} rows, as words
    and BIO tags."""
    words_out, tags_out = [], []
    for i, row in enumerate(rows):
        where = f"{what}[{i}]"
        if not isinstance(row, dict):
            raise InvalidInputError(f"{where} must be an object with tokens and tags")
        if "tokens" in row:
            words, tags = row.get("tokens"), row.get("tags")
            for key, value in (("tokens", words), ("tags", tags)):
                if not isinstance(value, list) or not value or not all(
                        isinstance(x, str) and x for x in value):
                    raise InvalidInputError(f"{where}.{key} must be a non-empty list of strings")
            if len(words) != len(tags):  # type: ignore[arg-type]
                raise InvalidInputError(f"{where} has {len(words)} tokens but {len(tags)} tags")  # type: ignore[arg-type]
            if sum(len(w) + 1 for w in words) > max_chars:  # type: ignore[union-attr]
                raise InvalidInputError(f"{where} is longer than {max_chars} characters")
        elif "text" in row:
            words, tags = _words_from_entities(row, where, max_chars)
        else:
            raise InvalidInputError(f"{where} needs tokens and tags, or text and entities")
        words_out.append(list(words))  # type: ignore[arg-type]
        tags_out.append(list(tags))  # type: ignore[arg-type]
    return words_out, tags_out


def _words_from_entities(row: dict[str, Any], where: str, max_chars: int
                         ) -> tuple[list[str], list[str]]:
    text, entities = row.get("text"), row.get("entities", [])
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError(f"{where}.text must be a non-empty string")
    if len(text) > max_chars:
        raise InvalidInputError(f"{where}.text has {len(text)} characters; the limit is {max_chars}")
    if not isinstance(entities, list):
        raise InvalidInputError(f"{where}.entities must be a list")
    spans = [(m.start(), m.end()) for m in WORD_RE.finditer(text)]
    tags = ["O"] * len(spans)
    for j, ent in enumerate(entities):
        at = f"{where}.entities[{j}]"
        if not isinstance(ent, dict) or not all(isinstance(ent.get(k), int) for k in ("start", "end")) \
                or not isinstance(ent.get("label"), str) or not ent["label"]:
            raise InvalidInputError(f"{at} needs integer start, end and a label")
        start, end = ent["start"], ent["end"]
        if not 0 <= start < end <= len(text):
            raise InvalidInputError(f"{at} span [{start}, {end}) is outside the text "
                                    f"(length {len(text)})")
        inside = [k for k, (a, b) in enumerate(spans) if a < end and b > start]
        if not inside or spans[inside[0]][0] != start or spans[inside[-1]][1] != end:
            raise InvalidInputError(f"{at} span [{start}, {end}) ({text[start:end]!r}) does not "
                                    f"start and end on word boundaries")
        if any(tags[k] != "O" for k in inside):
            raise InvalidInputError(f"{at} overlaps another entity")
        for n, k in enumerate(inside):
            tags[k] = ("B-" if n == 0 else "I-") + ent["label"]
    return [text[a:b] for a, b in spans], tags


def _tag_labels(tags: list[list[str]], labels: list[str] | None, what: str) -> list[str]:
    seen = sorted({t for seq in tags for t in seq}, key=lambda t: (t != "O", t[2:], t))
    for i, seq in enumerate(tags):
        for t in seq:
            if t != "O" and (t[:2] not in ("B-", "I-") or len(t) < 3):
                raise InvalidInputError(f"{what}[{i}] has tag {t!r}: use O, B-TYPE or I-TYPE")
    if labels is None:
        return seen if "O" in seen else ["O", *seen]
    unknown = sorted(set(seen) - set(labels))
    if unknown:
        raise InvalidInputError(f"{what} has tags {unknown} that are not in labels {labels}")
    return labels


def _class_label(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | str):
        return str(value)
    raise InvalidInputError(f"{where}.label must be a string or integer class, got "
                            f"{type(value).__name__}")


def _value(value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{where}.label must be a number for regression, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise InvalidInputError(f"{where}.label must be a finite number, got {value!r}")
    return number


def _targets(raw: list[Any], task_type: str, labels: list[str], what: str) -> list[Any]:
    if task_type == "regression":
        return [_value(v, f"{what}[{i}]") for i, v in enumerate(raw)]
    index = {name: i for i, name in enumerate(labels)}
    out = []
    for i, v in enumerate(raw):
        name = _class_label(v, f"{what}[{i}]")
        if name not in index:
            raise InvalidInputError(f"{what}[{i}].label {name!r} is not one of the labels {labels}")
        out.append(index[name])
    return out


def prepare(task_type: str, train_rows: list[Any], validation_rows: list[Any] | None,
            labels: list[str] | None, validation_fraction: float, seed: int, max_rows: int,
            max_chars: int) -> TrainingData:
    """Check everything a user can get wrong, with the row and field in the message."""
    if task_type not in TASK_TYPES:
        raise InvalidInputError(f"task_type must be one of {list(TASK_TYPES)}, got {task_type!r}")
    if not train_rows:
        raise InvalidInputError("train is empty: send labelled rows")
    total = len(train_rows) + len(validation_rows or [])
    if total > max_rows:
        raise InvalidInputError(f"{total} rows exceed the limit of {max_rows} (MAX_TRAIN_ROWS)")
    if task_type == "question_answering":
        return _prepare_qa(train_rows, validation_rows, validation_fraction, seed, max_chars)
    if task_type == "token_classification":
        return _prepare_tokens(train_rows, validation_rows, labels, validation_fraction, seed,
                               max_chars)
    texts, pairs, raw = _check_rows(train_rows, "train", max_chars)
    if task_type == "regression":
        if labels:
            raise InvalidInputError("labels are for classification; a regression adapter has none")
        labels = []
    else:
        seen = list(dict.fromkeys(_class_label(v, f"train[{i}]") for i, v in enumerate(raw)))
        if labels is not None and (
                len(set(labels)) != len(labels) or not all(isinstance(x, str) and x for x in labels)):
            raise InvalidInputError(f"labels must be distinct non-empty strings, got {labels}")
        labels = list(labels) if labels else sorted(seen)
        if len(seen) < 2:
            raise InvalidInputError(f"train has only one class ({seen[0]!r}); a classifier needs "
                                    f"examples of at least two")
    train = Examples(texts, pairs, _targets(raw, task_type, labels, "train"))
    if validation_rows:
        vt, vp, vr = _check_rows(validation_rows, "validation", max_chars)
        validation = Examples(vt, vp, _targets(vr, task_type, labels, "validation"))
        return TrainingData(task_type, labels, train, validation, True)
    train_idx, val_idx = split(train.targets, task_type, validation_fraction, seed)
    return TrainingData(task_type, labels, train.subset(train_idx), train.subset(val_idx), False)


def _prepare_tokens(train_rows: list[Any], validation_rows: list[Any] | None,
                    labels: list[str] | None, fraction: float, seed: int, max_chars: int
                    ) -> TrainingData:
    words, tags = _ner_rows(train_rows, "train", max_chars)
    labels = _tag_labels(tags, labels, "train")
    index = {t: i for i, t in enumerate(labels)}
    train = Examples([" ".join(w) for w in words], [None] * len(words),
                     [[index[t] for t in seq] for seq in tags], words)
    if validation_rows:
        vw, vt = _ner_rows(validation_rows, "validation", max_chars)
        _tag_labels(vt, labels, "validation")
        validation = Examples([" ".join(w) for w in vw], [None] * len(vw),
                              [[index[t] for t in seq] for seq in vt], vw)
        return TrainingData("token_classification", labels, train, validation, True)
    train_idx, val_idx = split(train.targets, "token_classification", fraction, seed)
    return TrainingData("token_classification", labels, train.subset(train_idx),
                        train.subset(val_idx), False)


def _qa_rows(rows: list[Any], what: str, max_chars: int) -> Examples:
    """SQuAD-style rows; targets are {"start", "text", "answers"} (the first answer trains)."""
    questions, contexts, targets = [], [], []
    for i, row in enumerate(rows):
        where = f"{what}[{i}]"
        if not isinstance(row, dict):
            raise InvalidInputError(f"{where} must be an object with question, context, answers")
        for key in ("question", "context"):
            value = row.get(key)
            if not isinstance(value, str) or not value.strip():
                raise InvalidInputError(f"{where}.{key} must be a non-empty string")
            if len(value) > max_chars:
                raise InvalidInputError(f"{where}.{key} has {len(value)} characters; the limit "
                                        f"is {max_chars}")
        answers = row.get("answers")
        texts = answers.get("text") if isinstance(answers, dict) else None
        starts = answers.get("answer_start") if isinstance(answers, dict) else None
        if not isinstance(texts, list) or not isinstance(starts, list) or not texts \
                or len(texts) != len(starts):
            raise InvalidInputError(f"{where}.answers must be {{\"text\": [...], "
                                    f"\"answer_start\": [...]}} of equal, non-zero length")
        context = row["context"]
        for j, (text, start) in enumerate(zip(texts, starts, strict=True)):
            if not isinstance(text, str) or not text or not isinstance(start, int) \
                    or context[start:start + len(text)] != text:
                raise InvalidInputError(f"{where}.answers[{j}] {text!r} is not inside the context "
                                        f"at {start!r}")
        questions.append(row["question"])
        contexts.append(context)
        targets.append({"start": starts[0], "text": texts[0], "answers": list(texts)})
    return Examples(questions, contexts, targets)  # type: ignore[arg-type]


def _prepare_qa(train_rows: list[Any], validation_rows: list[Any] | None, fraction: float,
                seed: int, max_chars: int) -> TrainingData:
    train = _qa_rows(train_rows, "train", max_chars)
    if validation_rows:
        return TrainingData("question_answering", [], train,
                            _qa_rows(validation_rows, "validation", max_chars), True)
    train_idx, val_idx = split(train.targets, "question_answering", fraction, seed)
    return TrainingData("question_answering", [], train.subset(train_idx), train.subset(val_idx),
                        False)


def split(targets: list[Any], task_type: str, fraction: float, seed: int
          ) -> tuple[list[int], list[int]]:
    """Seeded hold-out, stratified by class (regression: by value quantile)."""
    if len(targets) < 4:
        raise InvalidInputError(f"train has {len(targets)} rows; at least 4 are needed to hold "
                                f"some out for validation (or send a validation set)")
    rng = random.Random(seed)
    if task_type == "classification":
        strata = targets
    elif task_type != "regression":
        strata = [0] * len(targets)
    else:  # five quantile bins keep the value range in both parts
        order = sorted(range(len(targets)), key=targets.__getitem__)
        strata = [0] * len(targets)
        for rank, i in enumerate(order):
            strata[i] = rank * 5 // len(targets)
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, s in enumerate(strata):
        groups[s].append(i)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for _, members in sorted(groups.items()):
        rng.shuffle(members)
        n_val = round(len(members) * fraction)
        n_val = min(max(1, n_val), len(members) - 1) if len(members) >= 2 else 0
        val_idx += members[:n_val]
        train_idx += members[n_val:]
    if not val_idx:
        val_idx.append(train_idx.pop())
    return sorted(train_idx), sorted(val_idx)
