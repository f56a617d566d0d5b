"""A light HTTP/1.1 load generator (raw asyncio sockets, keep-alive) for POST /predict/{task}.

Runs in its own process so that its CPU does not count as the server's; it parses only the
status line, Content-Length and the "task" field, and checks each answer belongs to its request.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    statuses: dict[int, int] = field(default_factory=dict)
    mismatched: int = 0  # answers for another task or with the wrong number of predictions
    wall: float = 0.0


def _request(host: str, task: str, text: str) -> bytes:
    body = json.dumps({"inputs": [text]}).encode()
    head = (f"POST /predict/{task} HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(line.split(":", 1)[1]) for line in lines[1:]
                  if line.lower().startswith("content-length:"))
    return status, await reader.readexactly(length)


async def _client(host: str, port: int, jobs: list[tuple[str, str]], cursor: list[int],
                  result: LoadResult) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while cursor[0] < len(jobs):
            task, text = jobs[cursor[0]]
            cursor[0] += 1
            t0 = time.perf_counter()
            writer.write(_request(host, task, text))
            status, body = await _read_response(reader)
            elapsed = time.perf_counter() - t0
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status == 200:
                answer = json.loads(body)
                if answer["task"] != task or len(answer["predictions"]) != 1:
                    result.mismatched += 1
                result.latencies.append(elapsed)
    finally:
        writer.close()


async def _run(host: str, port: int, concurrency: int, jobs: list[tuple[str, str]]) -> LoadResult:
    result, cursor = LoadResult(), [0]
    t0 = time.perf_counter()
    await asyncio.gather(*(_client(host, port, jobs, cursor, result) for _ in range(concurrency)))
    result.wall = time.perf_counter() - t0
    return result


def generate(host: str, port: int, concurrency: int, requests: int, tasks: list[str],
             texts: list[str], seed: int) -> dict[str, Any]:
    """Process entry point: `requests` requests, each one random text for one random task."""
    rng = random.Random(seed)
    jobs = [(rng.choice(tasks), rng.choice(texts)) for _ in range(requests)]
    result = asyncio.run(_run(host, port, concurrency, jobs))
    return {"latencies": result.latencies, "statuses": result.statuses,
            "mismatched": result.mismatched, "wall": result.wall}
