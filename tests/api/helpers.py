"""Training jobs through the API, for the tests: submit one, wait for the state it should reach."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.unit.test_training_loop import sentiment_rows

QUICK = {"epochs": 3, "learning_rate": 0.03, "batch_size": 8, "bottleneck_size": 16,
         "base_dropout": False}
SLOW = {**QUICK, "epochs": 100, "patience": 100}


def submit_job(client: httpx.Client, name: str = "senti", config: dict | None = None,
               rows: int = 64, **extra: Any) -> dict:
    body = {"name": name, "task_type": "classification", "train": sentiment_rows(rows),
            "config": config or QUICK, **extra}
    r = client.post("/adapters", json=body)
    assert r.status_code == 202, r.text
    assert r.headers["Location"] == f"/jobs/{r.json()['job_id']}"
    return r.json()


def wait_for_job(client: httpx.Client, job_id: str, until: tuple[str, ...], timeout: float = 120,
                 predicate=lambda job: True) -> dict:  # type: ignore[no-untyped-def]
    """Poll the job until its status is one of `until` (and `predicate` holds); fail at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in until and predicate(job):
            return job
        assert time.monotonic() < deadline, f"job stuck: {job}"
        time.sleep(0.1)
