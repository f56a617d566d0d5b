"""Training data checks: every mistake a user can make is named, with its row and field."""

from __future__ import annotations

import pytest

from app.errors import InvalidInputError
from app.tasks import get_task
from app.tasks.classification import accuracy, macro_f1
from app.tasks.regression import mse, pearson, ranks, spearman
from app.training.data import parse_file, prepare, split


def _prep(rows, task="classification", labels=None, validation=None, max_rows=1000):  # type: ignore[no-untyped-def]
    return prepare(task, rows, validation, labels, 0.25, 0, max_rows, 50)


ROWS = [{"text": f"text {i}", "label": "pos" if i % 2 else "neg"} for i in range(8)]


def test_jsonl_and_csv_files_parse_to_the_same_rows() -> None:
    jsonl = b'{"text": "a", "label": "x"}\n\n{"text": "b", "text_pair": "c", "label": "y"}\n'
    csv = b"text,text_pair,label\na,,x\nb,c,y\n"
    assert parse_file(jsonl, "t.jsonl") == parse_file(csv, "t.csv") == [
        {"text": "a", "label": "x"}, {"text": "b", "text_pair": "c", "label": "y"}]
    assert parse_file(b"\xef\xbb\xbftext,label\n\"a, b\",x\n", None) == [
        {"text": "a, b", "label": "x"}]


@pytest.mark.parametrize(("data", "name", "message"), [
    (b'{"text": "a", "label": 1}\n{broken\n', "t.jsonl", "line 2 is not valid JSON"),
    (b'[1, 2]\n', "t.jsonl", "line 1 is not a JSON object"),
    (b"sentence;score\nx;1\n", "t.csv", "CSV with a header naming 'text' and 'label'"),
    (b"\xff\xfe\x00", "t.jsonl", "not UTF-8"),
    (b"\n\n", "t.jsonl", "holds no rows"),
])
def test_bad_files_are_refused(data: bytes, name: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_file(data, name)


@pytest.mark.parametrize(("rows", "kwargs", "message"), [
    ([], {}, "train is empty"),
    ([{"text": f"t{i}", "label": "a"} for i in range(5)], {}, "only one class"),
    (ROWS, {"labels": ["neg", "other"]}, r"train\[1\].label 'pos' is not one of the labels"),
    ([*ROWS, {"text": 5, "label": "pos"}], {}, r"train\[8\].text must be a string, got int"),
    ([*ROWS, {"label": "pos"}], {}, r"train\[8\].text must be a string, got nothing"),
    ([*ROWS, {"text": "x"}], {}, r"train\[8\] has no 'label'"),
    ([*ROWS, {"text": "x", "text_pair": ["y"], "label": "pos"}], {}, r"text_pair must be a string"),
    ([*ROWS, {"text": "   ", "label": "pos"}], {}, r"train\[8\].text is empty"),
    ([*ROWS, {"text": "x" * 51, "label": "pos"}], {}, "51 characters; the limit is 50"),
    ([*ROWS, {"text": "x", "label": 1.5}], {}, "string or integer class, got float"),
    ([*ROWS, "just a string"], {}, r"train\[8\] must be an object"),
    (ROWS, {"max_rows": 5}, "8 rows exceed the limit of 5"),
    (ROWS, {"labels": ["neg", "neg", "pos"]}, "distinct non-empty strings"),
    ([{"text": "a", "label": "oops"}] * 4, {"task": "regression"}, "must be a number"),
    ([{"text": "a", "label": float("nan")}] * 4, {"task": "regression"}, "finite number"),
    (ROWS, {"task": "ranking"}, "task_type must be one of"),
    (ROWS[:3], {}, "at least 4 are needed"),
    (ROWS, {"validation": [{"text": "v", "label": "maybe"}]},
     r"validation\[0\].label 'maybe' is not one of"),
])
def test_bad_training_data_is_refused(rows, kwargs, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInputError, match=message):
        _prep(rows, **kwargs)


def test_labels_inferred_and_given() -> None:
    data = _prep(ROWS)
    assert data.labels == ["neg", "pos"] and not data.validation_given
    assert sorted(data.train.targets + data.validation.targets) == [0] * 4 + [1] * 4
    given = _prep(ROWS, labels=["pos", "neg", "unused"])
    assert given.labels == ["pos", "neg", "unused"]
    ints = _prep([{"text": f"t{i}", "label": i % 2} for i in range(8)])
    assert ints.labels == ["0", "1"]


def test_split_is_stratified_seeded_and_disjoint() -> None:
    targets = [0] * 80 + [1] * 20
    train, val = split(targets, 0.1, seed=3)
    assert sorted(train + val) == list(range(100)) and not set(train) & set(val)
    assert [targets[i] for i in val].count(1) == 2 and len(val) == 10
    assert split(targets, 0.1, seed=3) == (train, val)
    assert split(targets, 0.1, seed=4) != (train, val)
    values = [float(i) for i in range(50)]
    _, reg_val = split(get_task("regression").strata(values), 0.2, seed=0)
    assert len(reg_val) == 10 and min(reg_val) < 10 and max(reg_val) >= 40  # spread over the range


def test_metrics_against_values_computed_by_hand() -> None:
    gold, pred = [0, 0, 1, 1, 2], [0, 1, 1, 1, 0]
    assert accuracy(gold, pred) == pytest.approx(3 / 5)
    # F1 per class: c0 = 2*1/(2+1+1) = 0.5, c1 = 2*2/(4+1+0) = 0.8, c2 = 0
    assert macro_f1(gold, pred, 3) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert mse([1.0, 2.0, 3.0], [1.0, 2.0, 5.0]) == pytest.approx(4 / 3)
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert ranks([10, 20, 20, 5]) == [2.0, 3.5, 3.5, 1.0]
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0


def test_bio_spans_follow_conlleval() -> None:
    from app.tasks.token_classification import bio_spans

    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-ORG", "O", "B-MISC"]
    assert bio_spans(tags) == [("PER", 0, 1), ("LOC", 3, 4), ("LOC", 5, 5), ("ORG", 6, 6),
                               ("MISC", 8, 8)]


def test_entity_scores_by_hand() -> None:
    from app.tasks.token_classification import entity_scores

    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "B-MISC"]]
    # gold 3 entities, predicted 4, correct 2 (PER 0-1, ORG in sentence 2)
    scores = entity_scores(gold, pred)
    assert scores["precision"] == pytest.approx(2 / 4)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    partial = entity_scores([["B-PER", "I-PER"]], [["B-PER", "O"]])  # a boundary off is wrong
    assert partial == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_squad_scores_by_hand() -> None:
    from app.tasks.question_answering import normalize_answer, squad_scores

    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple, a pear") == "apple pear"
    scores = squad_scores(["the Denver Broncos", "Santa Clara, California", ""],
                          [["Denver Broncos"], ["Levi's Stadium", "Santa Clara"], ["x"]])
    assert scores["exact_match"] == pytest.approx(1 / 3)
    # second: best gold "Santa Clara" -> precision 2/3, recall 1 -> F1 0.8
    assert scores["f1"] == pytest.approx((1 + 0.8 + 0) / 3)
