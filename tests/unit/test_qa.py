"""Extractive QA: windows over long contexts, answer positions, span decoding, data checks."""

from __future__ import annotations

import random

import pytest
import torch

from app.errors import InvalidInputError
from app.model.encoder import FrozenEncoder
from app.tasks import DecodeOptions, HeadConfig, get_task
from app.tasks.question_answering import (
    AnswerResult,
    QuestionAnsweringHead,
    WindowAnswer,
    merge_windows,
)
from app.training.config import TrainConfig
from app.training.data import prepare
from app.training.loop import train_adapter

FILL = ["the", "film", "was", "good", "and", "it", "very", "fun", "today", "in"]


def qa_rows(n: int, seed: int = 0, words: int = 12) -> list[dict]:
    """Contexts of filler words with one name; the question asks who; the name answers it."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ctx = [rng.choice(FILL) for _ in range(words)]
        at = rng.randrange(words)
        ctx[at] = rng.choice(["john", "mary"])
        context = " ".join(ctx)
        start = len(" ".join(ctx[:at])) + (1 if at else 0)
        rows.append({"question": "who was it ?", "context": context,
                     "answers": {"text": [ctx[at]], "answer_start": [start]}})
    return rows


def test_long_context_windows_and_answer_positions(encoder: FrozenEncoder) -> None:
    context = " ".join(["the film was good"] * 10 + ["john"] + ["and it was fun"] * 10)
    row = {"question": "who ?", "context": context,
           "answers": {"text": ["john"], "answer_start": [context.index("john")]}}
    data = prepare("question_answering", [row] * 4, [row], None, 0.25, 0, 10_000, 10_000)
    features, targets = get_task("question_answering").encode(encoder.tokenizer, data.validation,
                                                              32, 8)
    assert len(features) > 3 and {f.group for f in features} == {0}
    found = [(f, t) for f, t in zip(features, targets, strict=True) if t != (0, 0)]
    assert found  # in at least one window the answer lies whole ...
    for f, (s, e) in found:  # ... and its tokens point back at it
        assert f.text[f.offsets[s][0]:f.offsets[e][1]] == "john"
    # windows overlap: every context token is in some window
    covered = {f.offsets[i] for f in features for i, s in enumerate(f.sequence_ids) if s == 1}
    assert len(covered) == len(encoder.tokenizer.encode([context])[0]) - 2


def test_decode_picks_the_best_valid_span_and_merge_the_best_window(encoder: FrozenEncoder
                                                                    ) -> None:
    head = QuestionAnsweringHead(HeadConfig(task_type="question_answering"), 32)
    (f,) = encoder.tokenizer.encode_qa(["who ?"], ["mary visited paris today"], 8)
    n = len(f)
    logits = torch.full((n, 2), -5.0)
    ctx = [i for i, s in enumerate(f.sequence_ids) if s == 1]
    logits[ctx[2], 0], logits[ctx[2], 1] = 5.0, 5.0  # "paris"
    logits[1, 0] = 9.0  # a question token: never an answer
    out = head.decode(logits, f, DecodeOptions())
    assert (out.answer, out.start, out.end) == ("paris", 13, 18)
    assert 0 < out.null_score < out.score < 1
    assert head.decode(logits, f, DecodeOptions(max_answer_tokens=1)).answer == "paris"
    weak = WindowAnswer("mary", 0, 4, out.score / 2, out.null_score)
    assert merge_windows([weak, out]).answer == "paris"
    nothing = WindowAnswer("x", 0, 1, 0.01, 0.5)
    assert merge_windows([nothing]).answer == "x"
    assert merge_windows([nothing], allow_empty=True) == AnswerResult("", 0, 0, 0.01)


@pytest.mark.parametrize(("row", "message"), [
    ({"question": "q", "context": "abc", "answers": {"text": ["zz"], "answer_start": [0]}},
     "is not inside the context"),
    ({"question": "q", "context": "", "answers": {"text": ["a"], "answer_start": [0]}},
     "context must be a non-empty string"),
    ({"question": "q", "context": "abc", "answers": {"text": ["a"], "answer_start": []}},
     "equal, non-zero length"),
    ({"question": 3, "context": "abc", "answers": {"text": ["a"], "answer_start": [0]}},
     "question must be a non-empty string"),
])
def test_bad_qa_data_is_refused(row: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        prepare("question_answering", [row] * 4, None, None, 0.25, 0, 100, 100)


def test_qa_learns_to_point_at_the_name(encoder: FrozenEncoder) -> None:
    data = prepare("question_answering", qa_rows(160), None, None, 0.2, 0, 10_000, 10_000)
    config = TrainConfig(epochs=6, learning_rate=3e-2, batch_size=8, bottleneck_size=16,
                         patience=6, warmup_ratio=0, base_dropout=False, head_dropout=0,
                         max_seq_length=32, doc_stride=8)
    history: list[dict] = []
    result = train_adapter(encoder, data, config, on_epoch=history.append)
    assert set(history[0]) >= {"exact_match", "f1"}
    assert result.best_metrics["exact_match"] >= 0.8
