"""Request and response bodies of POST /predict/{task}."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.tasks import DecodeOptions, Prediction, TextInput
from app.tasks.classification import ClassificationResult
from app.tasks.multi_label_classification import MultiLabelResult
from app.tasks.question_answering import AnswerResult
from app.tasks.regression import RegressionResult
from app.tasks.token_classification import EntitiesResult


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

    def text_inputs(self) -> list[TextInput]:
        """The inputs as the prediction service takes them."""
        items = [self.inputs] if isinstance(self.inputs, str | QAInput) else self.inputs
        return [TextInput(i) if isinstance(i, str)
                else TextInput(tokens=i.tokens) if isinstance(i, TokensInput)
                else TextInput(i.context, question=i.question) if isinstance(i, QAInput)
                else TextInput(i.text, i.text_pair) for i in items]

    def options(self) -> DecodeOptions:
        return DecodeOptions(return_tokens=self.return_tokens,
                             max_answer_tokens=self.max_answer_tokens,
                             allow_empty=self.allow_empty)


class ClassificationPrediction(BaseModel):
    label: str = Field(description="The most probable label.")
    score: float = Field(description="Its probability.")
    scores: dict[str, float] = Field(description="Probability of every label.")


class MultiLabelPrediction(BaseModel):
    labels: list[str] = Field(description="Every label with probability >= 0.5, most probable "
                              "first (empty when none is).")
    scores: dict[str, float] = Field(description="Probability of every label, each on its own.")


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


PredictionBody = (ClassificationPrediction | MultiLabelPrediction | RegressionPrediction
                  | EntitiesPrediction | AnswerPrediction)
# The wire model of each task type's prediction (its fields are read off the result's attributes).
WIRE: dict[type[Prediction], type[PredictionBody]] = {
    ClassificationResult: ClassificationPrediction,
    MultiLabelResult: MultiLabelPrediction,
    RegressionResult: RegressionPrediction,
    EntitiesResult: EntitiesPrediction,
    AnswerResult: AnswerPrediction,
}


class PredictResponse(BaseModel):
    task: str
    version: int
    predictions: list[PredictionBody]

    @classmethod
    def of(cls, task: str, version: int, predictions: list[Prediction]) -> PredictResponse:
        return cls(task=task, version=version, predictions=[
            WIRE[type(p)].model_validate(p, from_attributes=True) for p in predictions])
