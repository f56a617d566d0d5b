"""Request and response bodies of POST /predict/{task}."""

from __future__ import annotations

from pydantic import AliasChoices, AliasPath, BaseModel, ConfigDict, Field

from app.tasks import DecodeOptions, Prediction, TextInput
from app.tasks.base import ExplainOptions
from app.tasks.classification import ClassificationResult
from app.tasks.multi_label_classification import MultiLabelResult
from app.tasks.question_answering import AnswerResult
from app.tasks.regression import RegressionResult
from app.tasks.token_classification import EntitiesResult

EXPLAIN_INPUT = Field(None, description="Explain this input (default: the request's `explain`).")


class PairInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The text, or the first text of a pair.")
    text_pair: str | None = Field(None, description="The second text of a pair.")
    explain: bool | None = EXPLAIN_INPUT


class TokensInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: list[str] = Field(min_length=1, description="Pre-split words (token classification).")
    explain: bool | None = EXPLAIN_INPUT


class QAInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str
    context: str
    explain: bool | None = EXPLAIN_INPUT


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
    explain: bool = Field(False, description="Add per-word attributions (integrated gradients) "
                          "to every prediction; an object input's own `explain` overrides it.")
    explain_steps: int = Field(16, ge=1, description="Integration steps an explanation starts "
                               "with (at most EXPLAIN_MAX_STEPS; steps + 1 points on the path): "
                               "more cost more and leave a smaller delta.")
    explain_tolerance: float | None = Field(None, ge=0, le=1, description="Double the steps "
                                            "(reusing the points taken) while |delta| exceeds "
                                            "this share of |output - baseline|, up to "
                                            "EXPLAIN_MAX_STEPS; 0: exactly explain_steps. "
                                            "Default: EXPLAIN_TOLERANCE.")
    explain_label: str | None = Field(None, min_length=1, description="Classification: explain "
                                      "this label instead of the predicted one.")

    def text_inputs(self) -> list[TextInput]:
        """The inputs as the prediction service takes them."""
        items = [self.inputs] if isinstance(self.inputs, str | QAInput) else self.inputs
        return [self._text_input(i) for i in items]

    def _text_input(self, item: str | PairInput | TokensInput | QAInput) -> TextInput:
        if isinstance(item, str):
            return TextInput(item, explain=self.explain)
        explain = self.explain if item.explain is None else item.explain
        if isinstance(item, TokensInput):
            return TextInput(tokens=item.tokens, explain=explain)
        if isinstance(item, QAInput):
            return TextInput(item.context, question=item.question, explain=explain)
        return TextInput(item.text, item.text_pair, explain=explain)

    def options(self) -> DecodeOptions:
        return DecodeOptions(return_tokens=self.return_tokens,
                             max_answer_tokens=self.max_answer_tokens,
                             allow_empty=self.allow_empty)

    def explain_options(self) -> ExplainOptions:
        return ExplainOptions(self.explain_steps, self.explain_label, self.explain_tolerance)


def _absent(value: object) -> bool:
    return value is None


class WordAttribution(BaseModel):
    text: str = Field(description="The word (its sub-tokens merged).")
    source: str = Field(description="The input field its offsets point into: text, text_pair, "
                        "question or context.")
    start: int = Field(description="Character offset of the word in that field.")
    end: int
    score: float = Field(description="Its share of output - baseline (signed; in the units of "
                         "the explained output: a probability, a value).")


class ExplanationBody(BaseModel):
    label: str | None = Field(None, exclude_if=_absent, description="The label (or entity type) "
                              "explained.")
    output: float = Field(description="The explained output for the input: the label's "
                          "probability, the value, the entity's or the answer's score.")
    baseline: float = Field(description="The same output with every word replaced by [MASK] "
                            "([PAD] for a vocabulary without one).")
    delta: float = Field(description="Sum of the attributions - (output - baseline): the "
                         "integration error (0 when exact).")
    steps: int = Field(description="The integration steps that gave the attributions: "
                       "explain_steps, doubled while the delta was over the tolerance.")


class Explained(BaseModel):
    """What an explained prediction (or entity) adds; absent otherwise."""

    # attributions are read off the result's explanation, or (a client parsing JSON) by name
    model_config = ConfigDict(validate_by_name=True)

    attributions: list[WordAttribution] | None = Field(
        default=None, exclude_if=_absent, description="One entry per word of the input (both "
        "texts of a pair, question and context), in input order.",
        validation_alias=AliasChoices("attributions", AliasPath("explanation", "attributions")))
    explanation: ExplanationBody | None = Field(None, exclude_if=_absent)


# Each explainable prediction: its own fields in a base, then Explained first among its bases, so
# that attributions and explanation come after the prediction's own fields in the JSON.
class _Classification(BaseModel):
    label: str = Field(description="The most probable label.")
    score: float = Field(description="Its probability.")
    scores: dict[str, float] = Field(description="Probability of every label.")


class ClassificationPrediction(Explained, _Classification):
    pass


class _MultiLabel(BaseModel):
    labels: list[str] = Field(description="Every label with probability >= 0.5, most probable "
                              "first (empty when none is).")
    scores: dict[str, float] = Field(description="Probability of every label, each on its own.")


class MultiLabelPrediction(Explained, _MultiLabel):
    pass


class _Regression(BaseModel):
    value: float


class RegressionPrediction(Explained, _Regression):
    pass


class _Entity(BaseModel):
    text: str
    label: str
    start: int = Field(description="Character offset of the first character in the input.")
    end: int = Field(description="Character offset just past the last character.")
    score: float = Field(description="Mean probability of the entity's word tags.")


class Entity(Explained, _Entity):
    pass


class TokenTag(BaseModel):
    token: str
    tag: str
    start: int
    end: int
    score: float


class EntitiesPrediction(BaseModel):
    entities: list[Entity]
    tokens: list[TokenTag] | None = None


class _Answer(BaseModel):
    answer: str = Field(description="The answer span; empty when none was found.")
    start: int = Field(description="Character offset of the answer in the context.")
    end: int
    score: float


class AnswerPrediction(Explained, _Answer):
    pass


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
