"""A light HTTP/1.1 client (raw asyncio sockets, keep-alive) and load generator for POST /predict.

Runs in its own process so that its CPU does not count as the server's; it parses only the
status line, Content-Length and the "task" field, and checks each answer belongs to its request
(and, given the expected answers, that it is the right one).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

TOLERANCE = 1e-4  # on numbers: batch composition moves the last bits of a float


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    statuses: dict[int, int] = field(default_factory=dict)
    mismatched: int = 0  # answers for another task or with the wrong number of predictions
    wall: float = 0.0


def same_answer(a: Any, b: Any) -> bool:
    """Equal JSON, numbers within TOLERANCE."""
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return abs(a - b) <= TOLERANCE
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_answer(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_answer(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@dataclass(frozen=True)
class Expected:
    """The right answer of every (task, text): the one its source adapter gives, where tasks
    are imported copies of a few sources (a task absent from `source` is its own source)."""

    source: dict[str, str]  # task -> the adapter it is a copy of
    answers: dict[str, dict[str, Any]]  # source -> text -> its one prediction

    def matches(self, task: str, text: str, prediction: Any) -> bool:
        return same_answer(prediction, self.answers[self.source.get(task, task)][text])


def http_request(host: str, method: str, path: str, body: bytes = b"",
                 content_type: str = "application/json") -> bytes:
    """One HTTP/1.1 request (keep-alive) as bytes."""
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one response that has a Content-Length (every one but SSE here)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(line.split(":", 1)[1]) for line in lines[1:]
                  if line.lower().startswith("content-length:"))
    return status, await reader.readexactly(length)


class Connection:
    """One keep-alive connection that sends a request and waits for its response."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, method: str, path: str, body: bytes = b"",
                      content_type: str = "application/json") -> tuple[int, bytes]:
        """(status, body); on any failure the connection is dropped and the error raised."""
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        try:
            writer.write(http_request(self.host, method, path, body, content_type))
            return await read_response(reader)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


async def _client(host: str, port: int, jobs: list[tuple[str, str]], cursor: list[int],
                  result: LoadResult, expected: Expected | None) -> None:
    conn = Connection(host, port)
    try:
        while cursor[0] < len(jobs):
            task, text = jobs[cursor[0]]
            cursor[0] += 1
            t0 = time.perf_counter()
            status, body = await conn.request("POST", f"/predict/{task}",
                                              json.dumps({"inputs": [text]}).encode())
            elapsed = time.perf_counter() - t0
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status == 200:
                answer = json.loads(body)
                if answer["task"] != task or len(answer["predictions"]) != 1 or (
                        expected and not expected.matches(task, text, answer["predictions"][0])):
                    result.mismatched += 1
                result.latencies.append(elapsed)
    finally:
        conn.close()


async def _run(host: str, port: int, concurrency: int, jobs: list[tuple[str, str]],
               expected: Expected | None = None) -> LoadResult:
    result, cursor = LoadResult(), [0]
    t0 = time.perf_counter()
    await asyncio.gather(*(_client(host, port, jobs, cursor, result, expected)
                           for _ in range(concurrency)))
    result.wall = time.perf_counter() - t0
    return result


def generate(host: str, port: int, concurrency: int, requests: int, tasks: list[str],
             texts: list[str], seed: int, weights: list[float] | None = None,
             expected: Expected | None = None) -> dict[str, Any]:
    """Process entry point: `requests` requests, each one random text for one random task
    (uniform, or in proportion to `weights`); with `expected`, every answer is compared to it.
    The texts are drawn apart from the tasks: one seed sends the same texts in the same order
    whatever the tasks, so cases differ only in their tasks."""
    text_rng, task_rng = random.Random(seed), random.Random(f"tasks-{seed}")
    chosen = ([task_rng.choice(tasks) for _ in range(requests)] if weights is None
              else task_rng.choices(tasks, weights, k=requests))
    jobs = [(task, text_rng.choice(texts)) for task in chosen]
    result = asyncio.run(_run(host, port, concurrency, jobs, expected))
    return {"latencies": result.latencies, "statuses": result.statuses,
            "mismatched": result.mismatched, "wall": result.wall,
            "cpu_s": time.process_time()}  # the whole process's: it exists for this call
