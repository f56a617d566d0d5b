"""The HTTP API fuzzed from its own OpenAPI schema: no 5xx, and every response as documented."""

from __future__ import annotations

from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.adapters.store import AdapterStore
from app.config import Settings
from app.main import app as contract_app
from app.main import create_app
from app.tasks import HeadConfig
from app.training.jobs import JobDB
from tests.conftest import AdapterFactory

# Stored before the run, one of each task type, so that paths name real adapters now and then.
TASKS = {
    "sentiment": HeadConfig(task_type="classification", labels=["neg", "pos"]),
    "similarity": HeadConfig(task_type="regression"),
    "ner": HeadConfig(task_type="token_classification", labels=["O", "B-PER", "I-PER"]),
    "squad": HeadConfig(task_type="question_answering"),
}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def _known_names(context: Any, path_parameters: dict[str, Any] | None) -> st.SearchStrategy:
    """A generated path, or the same path naming a stored adapter."""
    keys = [k for k in ("task", "name") if k in (path_parameters or {})]
    if not keys:
        return st.just(path_parameters)
    return st.one_of(st.just(path_parameters), st.sampled_from(sorted(TASKS)).map(
        lambda n: {**path_parameters, **dict.fromkeys(keys, n)}))


@pytest.fixture
def fuzz_app(settings: Settings, store: AdapterStore, make_adapter: AdapterFactory,
             monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    for seed, (name, head) in enumerate(TASKS.items()):
        make_adapter(store, name, seed=seed, head=head)
    # Training jobs are accepted and queued, but no worker ever starts: the fuzzer checks the
    # HTTP contract cheaply (tests/api/test_training_api.py runs real jobs).
    monkeypatch.setattr(JobDB, "claim_next", lambda self: None)
    return create_app(settings.model_copy(update={
        "max_queued_jobs": 3, "max_train_rows": 50, "max_train_upload_bytes": 20_000}))


# The contract is read from the module's app, never started (creating one loads nothing); each
# case goes to `fuzz_app`, whose lifespan schemathesis starts on the first call and ends with the
# test.
schema = schemathesis.openapi.from_dict(contract_app.openapi())
schema.app = contract_app
schema.hook("flatmap_path_parameters")(_known_names)


@pytest.mark.slow
@schema.parametrize()
@hypothesis.settings(max_examples=50, derandomize=True, database=None, deadline=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_every_response_is_documented_and_no_5xx(case: schemathesis.Case, fuzz_app: FastAPI
                                                 ) -> None:
    case.call_and_validate(app=fuzz_app, checks=CHECKS)


def test_every_error_status_documents_the_error_body() -> None:
    """FastAPI's default 422 body (`detail`) is not what this API sends: no route may keep it."""
    wrong = []
    for path, operations in contract_app.openapi()["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                ref = response.get("content", {}).get("application/json", {}).get("schema", {})
                body = ref.get("$ref", "").rsplit("/", 1)[-1]
                allowed = {"ErrorResponse", "Readiness"} if path == "/readyz" else {"ErrorResponse"}
                if int(status) >= 400 and body not in allowed:
                    wrong.append(f"{method.upper()} {path} {status}: {body or 'no JSON body'}")
    assert not wrong, wrong
