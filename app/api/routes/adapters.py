"""/adapters: list, describe, download, import, delete, reload."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import FileResponse, Response
from pydantic import AfterValidator
from starlette.datastructures import UploadFile

from app.api.auth import AdminScope
from app.api.body import (
    MULTIPART_FRAMING,
    BodyLimit,
    is_multipart,
    limited_form,
    read_limited,
    read_part,
)
from app.api.deps import ServicesDep
from app.api.errors import responses
from app.errors import InvalidInputError
from app.schemas.adapters import (
    AdapterDetail,
    AdapterList,
    DeleteResult,
    ReloadResult,
    decode_cursor,
)

router = APIRouter(prefix="/adapters", tags=["adapters"], responses=responses(503))
VersionQuery = Annotated[int | None, Query(ge=1, description="A version; default the newest.")]
LimitQuery = Annotated[int, Query(ge=1, le=1000, description="Adapters on one page.")]
CursorQuery = Annotated[str | None, Query(max_length=100, description="`next_cursor` of the "
                                          "previous page."), AfterValidator(decode_cursor)]
PrefixQuery = Annotated[str, Query(max_length=64, pattern=r"^[a-z0-9_-]*$",
                                   description="Only names that start with this.")]
ContainsQuery = Annotated[str, Query(max_length=64, pattern=r"^[a-z0-9_-]*$",
                                     description="Only names that hold this (a search box).")]
ERRORS = responses(404, 422)


@router.get("", response_model=AdapterList, responses=responses(422))
def list_adapters(services: ServicesDep, limit: LimitQuery = 100, cursor: CursorQuery = None,
                  prefix: PrefixQuery = "", contains: ContainsQuery = "") -> AdapterList:
    """Adapters in name order, a page at a time, from the store's index."""
    return AdapterList.of(services.adapters.overview(limit, cursor or "", prefix, contains))


@router.post("/reload", response_model=ReloadResult, dependencies=[AdminScope])
def reload_adapters(services: ServicesDep) -> ReloadResult:
    """Re-read the store now (it is also polled every STORE_POLL_SECONDS)."""
    changed, adapters, versions = services.adapters.reload()
    return ReloadResult(changed=changed, adapters=adapters, versions=versions)


@router.get("/{name}", response_model=AdapterDetail, responses=ERRORS)
def describe_adapter(name: str, services: ServicesDep, version: VersionQuery = None
                     ) -> AdapterDetail:
    return AdapterDetail.of(services.adapters.describe(name, version))


FormatQuery = Annotated[Literal["adapter-serve", "peft", "adapterhub"], Query(
    alias="format", description="adapter-serve: the weights file (imports as is); peft or "
    "adapterhub: a zip of the directory that library loads (PeftModel.from_pretrained, "
    "model.load_adapter(dir, with_head=True)).")]


@router.get("/{name}/download", responses={**ERRORS, 200: {"content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "application/zip": {"schema": {"type": "string", "format": "binary"}}},
    "description": "The weights file, or (format=peft|adapterhub) a zip of the library's files."}})
def download_adapter(name: str, services: ServicesDep, version: VersionQuery = None,
                     library: FormatQuery = "adapter-serve") -> Response:
    """The weights file; its safetensors header carries the metadata, so it imports as is. Or,
    with format=peft|adapterhub, the adapter in that library's own files."""
    if library == "adapter-serve":
        path, v = services.adapters.weights_path(name, version)
        return FileResponse(path, media_type="application/octet-stream",
                            filename=f"{name}-v{v}.safetensors",
                            headers={"X-Adapter-Version": str(v)})
    data, filename, v = services.adapters.export(name, version, library)
    return Response(data, media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="{filename}"',
        "X-Adapter-Version": str(v)})


@router.put("/{name}", response_model=AdapterDetail, status_code=status.HTTP_201_CREATED,
            responses=responses(409, 413, 422, 507), dependencies=[AdminScope],
            openapi_extra={"requestBody": {"content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "application/zip": {"schema": {"type": "string", "format": "binary"}},
                "application/gzip": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {"schema": {"type": "object", "properties": {
                    "file": {"type": "string", "format": "binary"}}}}}}})
async def import_adapter(name: str, request: Request, services: ServicesDep) -> AdapterDetail:
    """Import an adapter as a new version: a weights file (from /download or `adapter-serve
    train`), or a .zip / .tar.gz of a directory saved by AdapterHub (save_adapter(dir, name,
    with_head=True)) or PEFT (save_pretrained(dir))."""
    limit = BodyLimit(services.settings.max_adapter_bytes, "MAX_ADAPTER_BYTES",
                      "the adapter upload")
    data, content_type = await _read_upload(request, limit)
    return AdapterDetail.of(await asyncio.to_thread(services.adapters.import_bytes, name, data,
                                                    content_type))


@router.delete("/{name}", response_model=DeleteResult, responses=ERRORS,
                dependencies=[AdminScope])
def delete_adapter(name: str, services: ServicesDep, version: VersionQuery = None
                   ) -> DeleteResult:
    return DeleteResult(name=name, deleted_versions=services.adapters.delete(name, version))


async def _read_upload(request: Request, limit: BodyLimit) -> tuple[bytes, str | None]:
    """The raw body, or the `file` part of a multipart body, and its content type."""
    content_type = request.headers.get("content-type")
    if not is_multipart(request):
        data = await read_limited(request, limit)
    else:
        async with limited_form(request, limit, framing=MULTIPART_FRAMING) as form:
            part = form.get("file")
            if not isinstance(part, UploadFile):
                raise InvalidInputError(
                    "multipart upload needs the adapter file in a part named 'file'")
            data = await read_part(part, limit)
            content_type = part.content_type
    if not data:
        raise InvalidInputError("the upload is empty: send the .safetensors file (or a .zip / "
                                ".tar.gz of an AdapterHub or PEFT directory) as the body")
    return data, content_type
