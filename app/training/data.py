"""Training data: parse JSONL/CSV or inline rows, check them with the task type, split for validation."""

from __future__ import annotations

import csv
import io
import json
import random
from collections import defaultdict
from typing import Any

from app.errors import InvalidInputError
from app.tasks import get_task
from app.tasks.base import TrainingData


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


def prepare(task_type: str, train_rows: list[Any], validation_rows: list[Any] | None,
            labels: list[str] | None, validation_fraction: float, seed: int, max_rows: int,
            max_chars: int) -> TrainingData:
    """Check everything a user can get wrong, with the row and field in the message."""
    task = get_task(task_type)
    if not train_rows:
        raise InvalidInputError("train is empty: send labelled rows")
    total = len(train_rows) + len(validation_rows or [])
    if total > max_rows:
        raise InvalidInputError(f"{total} rows exceed the limit of {max_rows} (MAX_TRAIN_ROWS)")
    train = task.read_rows(train_rows, "train", max_chars)
    labels = task.labels(train, labels)
    train = task.targets(train, labels, "train")
    if validation_rows:
        validation = task.targets(task.read_rows(validation_rows, "validation", max_chars),
                                  labels, "validation")
        return TrainingData(task.name, labels, train, validation, True)
    train_idx, val_idx = split(task.strata(train.targets), validation_fraction, seed)
    return TrainingData(task.name, labels, train.subset(train_idx), train.subset(val_idx), False)


def split(strata: list[Any], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded hold-out that keeps each stratum (a task's `strata`: class, value bin) in both
    parts."""
    if len(strata) < 4:
        raise InvalidInputError(f"train has {len(strata)} rows; at least 4 are needed to hold "
                                f"some out for validation (or send a validation set)")
    rng = random.Random(seed)
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
