"""POST /predict/{task}."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import ServicesDep, cancel_on_disconnect
from app.api.errors import responses
from app.schemas.predict import PredictRequest, PredictResponse, QAInput, TokensInput
from app.serving.predictor import TextInput

router = APIRouter(tags=["predict"])


@router.post(
    "/predict/{task}",
    response_model=PredictResponse,
    responses=responses(404, 413, 422, 503, 504),
)
async def predict(task: str, body: PredictRequest, request: Request, services: ServicesDep
                  ) -> PredictResponse:
    """Run the inputs through the shared base with the task's adapter and head."""
    inputs = [TextInput(tokens=i.tokens) if isinstance(i, TokensInput)
              else TextInput(i.context, question=i.question) if isinstance(i, QAInput)
              else TextInput(i.text, i.text_pair) for i in body.items()]
    options = {"return_tokens": body.return_tokens, "max_answer_tokens": body.max_answer_tokens,
               "allow_empty": body.allow_empty}
    version, predictions = await cancel_on_disconnect(
        request, services.predictor.predict(task, inputs, body.version, options))
    return PredictResponse.model_validate(
        {"task": task, "version": version, "predictions": predictions})
