"""The console's files as the app serves them, and the two endpoints it asks first (/whoami,
/task-types). What the pages do in a browser: tests/browser."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app import __version__
from app.config import Settings
from app.console import STATIC_DIR, shared_modules
from app.main import create_app
from app.tasks import TASK_TYPES

BUDGET_BYTES = 200 * 1024  # the console's JavaScript and CSS together


@pytest.mark.parametrize("path", ["/", "/ui", "/ui/", "/ui/jobs/abc", "/ui/try/sentiment"])
def test_every_console_url_serves_the_page_with_a_strict_policy(client: TestClient,
                                                                path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert '<main id="view"' in r.text and "{{" not in r.text


def test_the_page_loads_only_files_the_server_has(client: TestClient) -> None:
    page = client.get("/").text
    assets = re.findall(r'(?:src|href)="(/ui/static/[^"?]+)', page)
    assert len(assets) == 3 + len(shared_modules())  # two styles, app.js and the preloads
    for asset in assets:
        answer = client.get(asset)
        assert answer.status_code == 200, asset
        assert "immutable" in answer.headers["cache-control"]  # the path names the version
    assert not re.search(r'(?:src|href)="(?:https?:)?//', page)  # nothing from another host
    for module in STATIC_DIR.rglob("*.js"):
        text = module.read_text()
        for imported in re.findall(r'from "(\.[^"]+)"', text):
            assert (module.parent / imported).resolve().is_file(), (module, imported)
        if "vendor" not in module.parts:
            assert "http://" not in text and "https://" not in text, module


def test_javascript_and_css_fit_the_budget() -> None:
    size = sum(f.stat().st_size for f in STATIC_DIR.rglob("*") if f.suffix in (".js", ".css"))
    assert size < BUDGET_BYTES, f"{size} bytes of JavaScript and CSS"


def test_console_can_be_turned_off(settings: Settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"console": False}))) as c:
        assert c.get("/").status_code == 404
        assert c.get(f"/ui/static/{__version__}/app.js").status_code == 404
        assert c.get("/healthz").status_code == 200


@pytest.mark.parametrize("path", [f"/ui/static/{__version__}/nope.js", "/ui/static/0.0.1/app.js"])
def test_a_missing_console_file_is_a_404(client: TestClient, path: str) -> None:
    missing = client.get(path)  # a file of another release too, not the page
    assert missing.status_code == 404 and path.rsplit("/", 1)[1] in missing.json()["error"][
        "message"]


def test_the_page_says_whether_keys_are_wanted(client: TestClient, settings: Settings) -> None:
    assert 'data-keys="off"' in client.get("/").text
    with TestClient(create_app(settings.model_copy(update={"api_keys": "k:predict"}))) as c:
        page = c.get("/ui/jobs").text
        assert 'data-keys="required"' in page and "k:predict" not in page


def test_whoami_without_keys_is_admin(client: TestClient) -> None:
    assert client.get("/whoami").json() == {"keys_required": False, "scope": "admin"}


def test_whoami_tells_each_key_its_scope(settings: Settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"api_keys": "rk:predict,ak:admin"}))
                    ) as c:
        assert c.get("/whoami").json() == {"keys_required": True, "scope": None}
        for key, scope in (("rk", "predict"), ("ak", "admin")):
            answer = c.get("/whoami", headers={"Authorization": f"Bearer {key}"})
            assert answer.json() == {"keys_required": True, "scope": scope}
        wrong = c.get("/whoami", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"


def test_task_types_list_every_type_with_its_training_defaults(client: TestClient) -> None:
    found = {t["name"]: t["training_defaults"] for t in client.get("/task-types").json()[
        "task_types"]}
    assert list(found) == list(TASK_TYPES)
    assert found["classification"]["epochs"] == 3 and found["classification"]["batch_size"] == 32
    assert found["question_answering"]["max_seq_length"] > found["classification"][
        "max_seq_length"]
