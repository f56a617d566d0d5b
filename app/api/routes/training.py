"""POST /adapters: queue a training job from inline rows or an uploaded JSONL/CSV file."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from app.api.auth import AdminScope
from app.api.body import BodyLimit, is_multipart, limited_form, read_limited, read_part
from app.api.deps import ServicesDep
from app.api.errors import responses
from app.errors import InvalidInputError
from app.schemas.jobs import JobView, TrainRequestBody
from app.training.data import parse_file
from app.training.manager import TrainRequest

router = APIRouter(prefix="/adapters", tags=["training"], responses=responses(503))

MULTIPART_SCHEMA = {"type": "object", "required": ["name", "task_type", "file"], "properties": {
    "name": {"type": "string"}, "task_type": {"type": "string"},
    "labels": {"type": "string", "description": "JSON array or comma-separated"},
    "config": {"type": "string", "description": "JSON object (TrainConfig)"},
    "description": {"type": "string"},
    "file": {"type": "string", "format": "binary", "description": "train rows, JSONL or CSV"},
    "validation_file": {"type": "string", "format": "binary"},
}}


@router.post(
    "", status_code=status.HTTP_202_ACCEPTED, response_model=JobView, dependencies=[AdminScope],
    responses=responses(409, 413, 422, 429, 507),
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/TrainRequestBody"}},
        "multipart/form-data": {"schema": MULTIPART_SCHEMA}}}},
)
async def train_adapter(request: Request, services: ServicesDep) -> JSONResponse:
    """Fit a new adapter in the background; poll the job at the Location header."""
    limit = BodyLimit(services.settings.max_train_upload_bytes, "MAX_TRAIN_UPLOAD_BYTES",
                      "the training upload")
    if is_multipart(request):
        async with limited_form(request, limit) as form:
            fields = await _form_fields(form, limit)
    else:
        fields = _json(await read_limited(request, limit))
    try:
        body = TrainRequestBody.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc
    job = await asyncio.to_thread(services.jobs.submit, TrainRequest(
        name=body.name, task_type=body.task_type, train=body.train, validation=body.validation,
        labels=body.labels, config=body.config, description=body.description))
    return JSONResponse(JobView.of(job).model_dump(mode="json"), status_code=202,
                        headers={"Location": f"/jobs/{job.id}"})


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"body is not valid JSON: {exc}") from exc


async def _form_fields(form: FormData, limit: BodyLimit) -> dict[str, Any]:
    fields: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
    for key in ("labels", "config"):
        if key in fields:
            fields[key] = _json_or_list(key, fields[key])
    for part, target in (("file", "train"), ("validation_file", "validation")):
        upload = form.get(part)
        if isinstance(upload, UploadFile):
            data = await read_part(upload, replace(limit, what=part))
            fields[target] = parse_file(data, upload.filename, target)
        elif part == "file":
            raise InvalidInputError("multipart training needs the rows in a file part named 'file'")
    return fields


def _json_or_list(key: str, value: str) -> Any:
    value = value.strip()
    if value.startswith(("[", "{")):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{key} is not valid JSON: {exc.msg}") from exc
    if key == "labels":
        return [x.strip() for x in value.split(",") if x.strip()]
    raise InvalidInputError(f"{key} must be a JSON object")
