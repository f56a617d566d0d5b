"""An HTTP request carried to a replica as data, and answered there by the ASGI app in-process.

No Ray here: the ingress captures a `Forwarded` request, the replica runs it through the same
FastAPI app a single machine serves (routes, middleware, keys, errors, metrics), and the answer
comes back as a `Head` followed by the body's chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

Message = MutableMapping[str, Any]
ASGIApp = Callable[[Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                   Awaitable[None]]
RawHeaders = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Forwarded:
    """What the ingress received: enough to replay the request to an ASGI app."""

    method: str
    path: str
    query: bytes
    headers: RawHeaders
    body: bytes
    client: tuple[str, int] | None = None


@dataclass(frozen=True)
class Head:
    """The start of an answer: its status and headers (the body follows in chunks)."""

    status: int
    headers: RawHeaders


@dataclass(frozen=True)
class Answer:
    """A whole answer, for requests whose body is not a stream."""

    status: int
    headers: RawHeaders
    body: bytes


def scope_of(req: Forwarded) -> Message:
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1", "method": req.method, "scheme": "http",
        "path": req.path, "raw_path": req.path.encode(), "query_string": req.query,
        "root_path": "", "headers": req.headers, "client": req.client, "server": None,
        "state": {},
    }


async def call(app: ASGIApp, req: Forwarded) -> AsyncIterator[Head | bytes]:
    """Run `req` through `app`: yields the Head, then the body's non-empty chunks. Closing the
    iterator early is a client that went away: the app sees http.disconnect."""
    messages: asyncio.Queue[Message | None] = asyncio.Queue()
    gone = asyncio.Event()
    body_sent = False

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": req.body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        await messages.put(message)

    async def run() -> None:
        try:
            await app(scope_of(req), receive, send)
        finally:
            await messages.put(None)

    task = asyncio.create_task(run())
    try:
        while (message := await messages.get()) is not None:
            if message["type"] == "http.response.start":
                yield Head(message["status"], list(message.get("headers", [])))
            elif message["type"] == "http.response.body":
                if chunk := message.get("body", b""):
                    yield bytes(chunk)
                if not message.get("more_body", False):
                    break
    finally:
        gone.set()
        await _finish(task)


async def _finish(task: asyncio.Task[None]) -> None:
    """Let the app end (it has answered, or the caller left); an error it raised after its
    500 went out is logged, not raised into a stream already closed."""
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout=5.0)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    except Exception:
        log.exception("the app raised after answering")


async def answer(app: ASGIApp, req: Forwarded) -> Answer:
    """The whole answer to `req`."""
    head, chunks = Head(500, []), []
    async for part in call(app, req):
        if isinstance(part, Head):
            head = part
        else:
            chunks.append(part)
    return Answer(head.status, head.headers, b"".join(chunks))
