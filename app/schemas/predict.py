"""Request and response bodies of POST /predict/{task}."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PairInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The text, or the first text of a pair.")
    text_pair: str | None = Field(None, description="The second text of a pair.")


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"inputs": ["a gripping, funny film", "dull and slow"]}]},
    )

    inputs: str | list[str | PairInput] = Field(
        description="One text, a list of texts, or a list of {text, text_pair} objects."
    )
    version: int | None = Field(None, ge=1, description="Adapter version; default the newest.")

    def as_pairs(self) -> list[PairInput]:
        items = [self.inputs] if isinstance(self.inputs, str) else self.inputs
        return [i if isinstance(i, PairInput) else PairInput(text=i) for i in items]


class ClassificationPrediction(BaseModel):
    label: str = Field(description="The most probable label.")
    score: float = Field(description="Its probability.")
    scores: dict[str, float] = Field(description="Probability of every label.")


class RegressionPrediction(BaseModel):
    value: float


class PredictResponse(BaseModel):
    task: str
    version: int
    predictions: list[ClassificationPrediction | RegressionPrediction]
