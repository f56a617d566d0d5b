"""Token classification: word alignment, offsets, BIO decoding, data checks, training."""

from __future__ import annotations

import random

import pytest
import torch

from app.errors import InvalidInputError
from app.model.encoder import FrozenEncoder
from app.model.tokenization import Feature
from app.tasks import DecodeOptions, HeadConfig, get_task
from app.tasks.token_classification import TokenClassificationHead, word_spans
from app.training.config import TrainConfig
from app.training.data import prepare
from app.training.loop import train_adapter

TAGS = ["O", "B-PER", "I-PER", "B-LOC"]


def ner_rows(n: int, seed: int = 0) -> list[dict]:
    """Sentences of filler words with people (one word), places and 'acme corp' (two words)."""
    rng = random.Random(seed)
    fill = ["the", "was", "in", "today", "and", "it", "very", "good"]
    rows = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(3, 7)):
            r = rng.random()
            if r < 0.15:
                words, tags = words + [rng.choice(["john", "mary"])], tags + ["B-PER"]
            elif r < 0.3:
                words, tags = words + [rng.choice(["paris", "london"])], tags + ["B-LOC"]
            elif r < 0.4:
                words, tags = words + ["acme", "corp"], tags + ["B-ORG", "I-ORG"]
            else:
                words, tags = words + [rng.choice(fill)], tags + ["O"]
        rows.append({"tokens": words, "tags": tags})
    return rows


def test_words_map_to_sub_tokens_and_offsets(encoder: FrozenEncoder) -> None:
    words = ["john", "visited", "parisx", ",", "today", "!"]  # "parisx" = paris ##x
    (f,) = encoder.tokenizer.encode_words([words])
    assert f.text == "john visited parisx , today !"
    assert f.word_ids == [None, 0, 1, 2, 2, 3, 4, 5, None]
    assert [f.text[a:b] for a, b in f.offsets] == ["", "john", "visited", "paris", "x", ",",
                                                   "today", "!", ""]
    (g,) = encoder.tokenizer.encode(["Müller visited  Paris."])  # unicode, double space
    assert [g.text[a:b] for _, a, b in word_spans(g)] == ["Müller", "visited", "Paris", "."]


def test_only_first_sub_token_of_a_word_carries_its_tag(encoder: FrozenEncoder) -> None:
    data = prepare("token_classification",
                   [{"tokens": ["john", "visited", "parisx"], "tags": ["B-PER", "O", "B-LOC"]}] * 4,
                   [{"tokens": ["mary"], "tags": ["B-PER"]}], None, 0.25, 0, 100, 100)
    assert data.labels == ["O", "B-LOC", "B-PER"]
    feats, targets = get_task(data.task_type).encode(encoder.tokenizer, data.train, 64, 0)
    assert feats[0].word_ids == [None, 0, 1, 2, 2, None]
    assert targets[0] == [-100, 2, 0, 1, -100, -100]


def _feature(text: str, spans: list[tuple[int, int]]) -> Feature:
    """One token per word, with [CLS]/[SEP] around."""
    return Feature(list(range(len(spans) + 2)), None, [(0, 0), *spans, (0, 0)],
                   [None, *range(len(spans)), None], text)


def test_decode_repairs_bio_and_points_into_the_text() -> None:
    head = TokenClassificationHead(HeadConfig(task_type="token_classification", labels=TAGS), 4)
    text = "Dr. John Smith met Anna in São Paulo"
    spans = [(0, 2), (2, 3), (4, 8), (9, 14), (15, 18), (19, 23), (24, 26), (27, 30), (31, 36)]
    tags = ["O", "O", "B-PER", "I-PER", "O", "I-PER", "O", "B-LOC", "I-LOC"]
    probs = torch.zeros(len(spans) + 2, len(TAGS + ["I-LOC"]))
    labels = TAGS + ["I-LOC"]
    for i, t in enumerate(tags):
        probs[i + 1, labels.index(t)] = 0.9 if i != 3 else 0.7
    head = TokenClassificationHead(HeadConfig(task_type="token_classification", labels=labels), 4)
    feature = _feature(text, spans)
    out = head.decode(probs, feature, DecodeOptions(return_tokens=True))
    assert [(e.text, e.label, e.start, e.end) for e in out.entities] == [
        ("John Smith", "PER", 4, 14), ("Anna", "PER", 19, 23), ("São Paulo", "LOC", 27, 36)]
    assert out.entities[0].score == pytest.approx(0.8)
    assert out.tokens is not None
    assert [t.tag for t in out.tokens] == tags and out.tokens[0].token == "Dr"
    assert head.decode(probs, feature, DecodeOptions()).tokens is None


@pytest.mark.parametrize(("rows", "message"), [
    ([{"tokens": ["a", "b"], "tags": ["O"]}], r"train\[0\] has 2 tokens but 1 tags"),
    ([{"tokens": ["a"], "tags": ["PER"]}], "use O, B-TYPE or I-TYPE"),
    ([{"tokens": [], "tags": []}], "non-empty list of strings"),
    ([{"tokens": ["a", 3], "tags": ["O", "O"]}], "non-empty list of strings"),
    ([{"text": "John", "entities": [{"start": 0, "end": 9, "label": "PER"}]}], "outside the text"),
    ([{"text": "Johnson", "entities": [{"start": 0, "end": 4, "label": "PER"}]}],
     "does not start and end on word boundaries"),
    ([{"text": "John Smith", "entities": [{"start": 0, "end": 10, "label": "PER"},
                                          {"start": 5, "end": 10, "label": "PER"}]}], "overlaps"),
    ([{"label": "x"}], "needs tokens and tags, or text and entities"),
])
def test_bad_ner_data_is_refused(rows: list[dict], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        prepare("token_classification", rows * 4, None, None, 0.25, 0, 100, 100)


def test_unknown_tags_against_given_labels() -> None:
    with pytest.raises(InvalidInputError, match=r"tags \['B-LOC'\] that are not in labels"):
        prepare("token_classification", [{"tokens": ["x"], "tags": ["B-LOC"]}] * 4, None,
                ["O", "B-PER"], 0.25, 0, 100, 100)


def test_text_with_entities_becomes_bio_words() -> None:
    rows = [{"text": "Mary works at Acme Corp.", "entities": [
        {"start": 0, "end": 4, "label": "PER"}, {"start": 14, "end": 23, "label": "ORG"}]}] * 4
    data = prepare("token_classification", rows, None, None, 0.25, 0, 100, 100)
    assert data.train.words[0] == ["Mary", "works", "at", "Acme", "Corp", "."]
    assert [data.labels[t] for t in data.train.targets[0]] == [
        "B-PER", "O", "O", "B-ORG", "I-ORG", "O"]


def test_tagger_learns_entities(encoder: FrozenEncoder) -> None:
    data = prepare("token_classification", ner_rows(160), None, None, 0.2, 0, 10_000, 1_000)
    config = TrainConfig(epochs=4, learning_rate=3e-2, batch_size=8, bottleneck_size=16,
                         patience=4, warmup_ratio=0, base_dropout=False, head_dropout=0)
    history: list[dict] = []
    result = train_adapter(encoder, data, config, on_epoch=history.append)
    assert set(history[0]) >= {"precision", "recall", "f1"}
    assert result.best_metrics["f1"] >= 0.9
