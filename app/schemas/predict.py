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


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"inputs": ["a gripping, funny film", "dull and slow"]}]},
    )

    inputs: str | list[str | PairInput | TokensInput] = Field(
        description="One text, a list of texts, a list of {text, text_pair} objects, or (token "
        "classification) a list of {tokens} objects."
    )
    version: int | None = Field(None, ge=1, description="Adapter version; default the newest.")
    return_tokens: bool = Field(False, description="Token classification: also the tag of "
                                "every word.")

    def items(self) -> list[PairInput | TokensInput]:
        items = [self.inputs] if isinstance(self.inputs, str) else self.inputs
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


class PredictResponse(BaseModel):
    task: str
    version: int
    predictions: list[ClassificationPrediction | RegressionPrediction | EntitiesPrediction]
