"""Request and response bodies of POST /predict/{task}."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PairInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The text, or the first text of a pair.")
    text_pair: str | None = Field(None, description="The second text of a pair.")


class TokensInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: list[str] = Field(min_length=1, description="Pre-split words (token classification).")


class QAInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str
    context: str


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"inputs": ["a gripping, funny film", "dull and slow"]}]},
    )

    inputs: str | QAInput | list[str | PairInput | TokensInput | QAInput] = Field(
        description="One text, a list of texts, a list of {text, text_pair} objects, (token "
        "classification) {tokens} objects, or (question answering) {question, context} objects."
    )
    version: int | None = Field(None, ge=1, description="Adapter version; default the newest.")
    return_tokens: bool = Field(False, description="Token classification: also the tag of "
                                "every word.")
    max_answer_tokens: int = Field(30, ge=1, le=512, description="Question answering: longest "
                                   "answer, in tokens.")
    allow_empty: bool = Field(False, description="Question answering: answer \"\" (with a low "
                              "score) when no span beats the no-answer score.")

    def items(self) -> list[PairInput | TokensInput | QAInput]:
        items = [self.inputs] if isinstance(self.inputs, str | QAInput) else self.inputs
        return [PairInput(text=i) if isinstance(i, str) else i for i in items]


class ClassificationPrediction(BaseModel):
    label: str = Field(description="The most probable label.")
    score: float = Field(description="Its probability.")
    scores: dict[str, float] = Field(description="Probability of every label.")


class RegressionPrediction(BaseModel):
    value: float


class Entity(BaseModel):
    text: str
    label: str
    start: int = Field(description="Character offset of the first character in the input.")
    end: int = Field(description="Character offset just past the last character.")
    score: float = Field(description="Mean probability of the entity's word tags.")


class TokenTag(BaseModel):
    token: str
    tag: str
    start: int
    end: int
    score: float


class EntitiesPrediction(BaseModel):
    entities: list[Entity]
    tokens: list[TokenTag] | None = None


class AnswerPrediction(BaseModel):
    answer: str = Field(description="The answer span; empty when none was found.")
    start: int = Field(description="Character offset of the answer in the context.")
    end: int
    score: float


class PredictResponse(BaseModel):
    task: str
    version: int
    predictions: list[ClassificationPrediction | RegressionPrediction | EntitiesPrediction
                      | AnswerPrediction]
