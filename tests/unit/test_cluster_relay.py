"""The relay a cluster's replicas answer through (app.cluster.asgi): a request carried as data
gets the answer the app gives over HTTP, a stream arrives in its chunks, and a caller that
leaves is a disconnect to the app. No Ray needed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient

from app.cluster import asgi
from app.cluster.asgi import Forwarded, Head


def make_app(seen: list[str]) -> FastAPI:
    app = FastAPI()

    @app.post("/echo/{name}")
    async def echo(name: str, request: Request) -> dict[str, object]:
        return {"name": name, "body": await request.json(), "q": request.query_params["q"],
                "client": request.client.host if request.client else None}

    @app.get("/events")
    async def events(request: Request) -> StreamingResponse:
        async def stream() -> AsyncIterator[str]:
            try:
                for i in range(1000):
                    if await request.is_disconnected():
                        return
                    yield f"data: {i}\n\n"
                    await asyncio.sleep(0.01)
            finally:
                seen.append(f"stopped at {i}")

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


def forwarded(method: str, path: str, body: object = None, query: bytes = b"") -> Forwarded:
    return Forwarded(method, path, query, [(b"content-type", b"application/json")],
                     json.dumps(body).encode() if body is not None else b"", ("10.0.0.7", 5000))


def test_a_forwarded_request_gets_the_answer_http_gets() -> None:
    app = make_app([])
    answer = asyncio.run(asgi.answer(app, forwarded("POST", "/echo/x", {"a": 1}, b"q=2")))
    over_http = TestClient(app).post("/echo/x?q=2", json={"a": 1})
    assert answer.status == over_http.status_code == 200
    assert json.loads(answer.body) == {**over_http.json(), "client": "10.0.0.7"}
    assert (b"content-type", b"application/json") in answer.headers
    missing = asyncio.run(asgi.answer(app, forwarded("GET", "/nothing")))
    assert missing.status == 404 and json.loads(missing.body) == {"detail": "Not Found"}


def test_a_stream_arrives_in_chunks_and_a_caller_leaving_is_a_disconnect() -> None:
    seen: list[str] = []

    async def read_three() -> list[Head | bytes]:
        parts: list[Head | bytes] = []
        stream = asgi.call(make_app(seen), forwarded("GET", "/events"))
        async for part in stream:
            parts.append(part)
            if len(parts) == 4:
                break
        await stream.aclose()  # the caller leaves
        return parts

    head, *chunks = asyncio.run(read_three())
    assert isinstance(head, Head) and head.status == 200
    assert chunks == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]
    assert seen and seen[0] != "stopped at 999"  # the app stopped when the caller left
