"""Who may call what: API keys and scopes, body limits, CORS. Keys never reach the logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.auth import KeyConfigError, KeyRing, Scope
from app.config import Settings
from app.main import create_app

PREDICT_KEY, ADMIN_KEY, FILE_KEY = "p-3f9a1c7e5b", "a-8d2e6f0b4c", "f-1a2b3c4d5e"

# (method, path, scope the endpoint needs); None: open to everyone.
ENDPOINTS = [
    ("GET", "/healthz", None),
    ("GET", "/readyz", None),
    ("GET", "/metrics", None),
    ("POST", "/predict/sentiment", Scope.PREDICT),
    ("GET", "/adapters", Scope.PREDICT),
    ("GET", "/adapters/sentiment", Scope.PREDICT),
    ("GET", "/adapters/sentiment/download", Scope.PREDICT),
    ("GET", "/jobs", Scope.PREDICT),
    ("GET", "/jobs/nope", Scope.PREDICT),
    ("POST", "/adapters", Scope.ADMIN),
    ("PUT", "/adapters/other", Scope.ADMIN),
    ("DELETE", "/adapters/other", Scope.ADMIN),
    ("POST", "/adapters/reload", Scope.ADMIN),
    ("DELETE", "/jobs/nope", Scope.ADMIN),
]


@pytest.fixture
def secured(settings: Settings, tmp_path: Path) -> TestClient:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# operators\n{FILE_KEY}:admin\n\n")
    cfg = settings.model_copy(update={"api_keys": f"{PREDICT_KEY}:predict, {ADMIN_KEY}:admin",
                                      "api_keys_file": keys_file})
    with TestClient(create_app(cfg)) as client:
        yield client


def _call(client: TestClient, method: str, path: str, key: str | None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"inputs": ["text"]} if path.startswith("/predict") else None
    return client.request(method, path, headers=headers, json=body).status_code


@pytest.mark.parametrize(("method", "path", "needed"), ENDPOINTS)
def test_each_endpoint_needs_its_scope(secured: TestClient, method: str, path: str,
                                       needed: Scope | None) -> None:
    expect_for = {  # key -> is the answer an auth refusal, and which
        None: 401 if needed else None,
        "wrong-key": 401 if needed else None,
        PREDICT_KEY: 403 if needed is Scope.ADMIN else None,
        ADMIN_KEY: None,
        FILE_KEY: None,
    }
    for key, refusal in expect_for.items():
        status = _call(secured, method, path, key)
        if refusal is None:
            assert status not in (401, 403), (key, status)
        else:
            assert status == refusal, (key, status)


def test_refusals_say_what_is_wrong(secured: TestClient) -> None:
    missing = secured.get("/adapters")
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert missing.json()["error"]["code"] == "unauthorized"
    assert "Authorization: Bearer" in missing.json()["error"]["message"]
    basic = secured.get("/adapters", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status_code == 401
    wrong = secured.post("/adapters/reload", headers={"Authorization": f"Bearer {PREDICT_KEY}"})
    assert wrong.status_code == 403
    assert "'admin' scope" in wrong.json()["error"]["message"]


def test_metrics_can_be_protected(settings: Settings) -> None:
    cfg = settings.model_copy(update={"api_keys": f"{PREDICT_KEY}:predict", "metrics_auth": True})
    with TestClient(create_app(cfg)) as client:
        assert client.get("/metrics").status_code == 401
        ok = client.get("/metrics", headers={"Authorization": f"Bearer {PREDICT_KEY}"})
        assert ok.status_code == 200 and "adapter_serve_queue_rows" in ok.text
        assert client.get("/healthz").status_code == 200


def test_keys_never_reach_the_logs(secured: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for key in (PREDICT_KEY, ADMIN_KEY, "guessed-key-123"):
        for method, path, _ in ENDPOINTS:
            _call(secured, method, path, key)
    assert caplog.records  # the access log did run
    for key in (PREDICT_KEY, ADMIN_KEY, FILE_KEY, "guessed-key-123"):
        assert key not in caplog.text


@pytest.mark.parametrize(("text", "message"), [
    ("abc", "entry 1 is not 'key:scope'"),
    ("k1:admin,:predict", "entry 2 is not 'key:scope'"),
    ("k1:root", "entry 1 has scope 'root'"),
    ("my key:admin", "cannot contain spaces"),
])
def test_malformed_key_lists_are_refused_without_echoing_keys(
        settings: Settings, text: str, message: str) -> None:
    with pytest.raises(KeyConfigError, match=message) as info:
        KeyRing.from_settings(settings.model_copy(update={"api_keys": text}))
    assert "k1" not in str(info.value) and "my key" not in str(info.value)


def test_a_bad_key_list_stops_the_start(settings: Settings) -> None:
    cfg = settings.model_copy(update={"api_keys_file": Path(settings.adapters_dir) / "missing"})
    with pytest.raises(KeyConfigError, match="API_KEYS_FILE cannot be read"), \
            TestClient(create_app(cfg)):
        pass


def test_admin_implies_predict_and_the_strongest_scope_wins() -> None:
    ring = KeyRing.from_settings(Settings(api_keys="k:predict,k:admin,j:predict"))
    assert ring.scope_of("k") is Scope.ADMIN and ring.scope_of("j") is Scope.PREDICT
    assert ring.scope_of("") is None and ring.scope_of("k ") is None
    assert Scope.ADMIN.allows(Scope.PREDICT) and not Scope.PREDICT.allows(Scope.ADMIN)
    assert not KeyRing.from_settings(Settings(api_keys="")).enabled


# ---------------------------------------------------------------------------- body limit
def test_request_bodies_over_the_limit_get_413(settings: Settings) -> None:
    cfg = settings.model_copy(update={"max_request_bytes": 2048})
    big = {"inputs": ["x" * 100] * 30}  # ~3 KB
    with TestClient(create_app(cfg)) as client:
        declared = client.post("/predict/sentiment", json=big)
        assert declared.status_code == 413, declared.text
        error = declared.json()["error"]
        assert error["code"] == "payload_too_large" and "MAX_REQUEST_BYTES" in error["message"]
        assert error["request_id"] == declared.headers["X-Request-ID"]

        def chunks():  # no Content-Length: the body arrives chunked and is counted
            for _ in range(4):
                yield b"x" * 1000

        streamed = client.post("/predict/sentiment", content=chunks(),
                               headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413, streamed.text
        assert client.get("/healthz").status_code == 200  # and it keeps serving


# ---------------------------------------------------------------------------------- CORS
def test_cors_is_off_by_default_and_configurable(settings: Settings, client: TestClient) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options("/predict/x",
                                                               headers=preflight).headers
    cfg = settings.model_copy(update={"cors_origins": "https://app.example"})
    with TestClient(create_app(cfg)) as c:
        allowed = c.options("/predict/x", headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = c.options("/predict/x", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_empty_variables_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """`API_KEYS_FILE=` (as compose passes an unset variable) must not name the current dir."""
    monkeypatch.setenv("API_KEYS_FILE", "")
    monkeypatch.setenv("API_KEYS", "")
    settings = Settings()
    assert settings.api_keys_file is None and not KeyRing.from_settings(settings).enabled
