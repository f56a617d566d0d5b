"""Reading a request body under a size limit: the raw body, or the parts of a multipart form."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import FormData, UploadFile

from app.errors import PayloadTooLargeError

MULTIPART = "multipart/form-data"
MULTIPART_FRAMING = 64 * 1024  # what boundaries and part headers may add to a file part


@dataclass(frozen=True)
class BodyLimit:
    """At most `size` bytes of `what`, as the setting named says."""

    size: int
    setting: str  # e.g. MAX_ADAPTER_BYTES
    what: str = "the request body"

    def refusal(self, size: int | None = None) -> PayloadTooLargeError:
        """The 413 to answer with; `size` is the body's, where it is known."""
        of = f" of {size} bytes" if size is not None else ""
        return PayloadTooLargeError(f"{self.what}{of} exceeds the limit of {self.size} bytes "
                                    f"(setting {self.setting})")

    def check_declared(self, headers: Mapping[str, str], framing: int = 0) -> None:
        """Refuse at once a body whose Content-Length says it is too large."""
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.size + framing:
            raise self.refusal(int(declared))


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith(MULTIPART)


async def read_limited(request: Request, limit: BodyLimit) -> bytes:
    """The whole body, reading no more than `limit` bytes of it, declared or chunked."""
    limit.check_declared(request.headers)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit.size:
            raise limit.refusal()
        chunks.append(chunk)
    return b"".join(chunks)


@asynccontextmanager
async def limited_form(request: Request, limit: BodyLimit, framing: int = 0
                       ) -> AsyncIterator[FormData]:
    """The multipart form, no part of it over `limit`; its spooled files are closed after.

    The whole body may exceed `limit` by `framing` bytes: MULTIPART_FRAMING where the limit is
    on one file, not on the body that carries it.
    """
    limit.check_declared(request.headers, framing)
    async with request.form(max_part_size=limit.size) as form:
        yield form


async def read_part(part: UploadFile, limit: BodyLimit) -> bytes:
    """A file part of a form, refused over `limit` (files are not bound by max_part_size)."""
    data = await part.read(limit.size + 1)
    if len(data) > limit.size:
        raise limit.refusal()
    return data
