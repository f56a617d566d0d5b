"""POST /predict/{task}."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import ServicesDep, cancel_on_disconnect
from app.api.errors import responses
from app.schemas.predict import PredictRequest, PredictResponse

router = APIRouter(tags=["predict"])


@router.post(
    "/predict/{task}",
    response_model=PredictResponse,
    responses=responses(404, 413, 422, 503, 504),
)
async def predict(task: str, body: PredictRequest, request: Request, services: ServicesDep
                  ) -> PredictResponse:
    """Run the inputs through the shared base with the task's adapter and head."""
    version, predictions = await cancel_on_disconnect(request, services.predictor.predict(
        task, body.text_inputs(), body.version, body.options(), body.explain_options()))
    return PredictResponse.of(task, version, predictions)
