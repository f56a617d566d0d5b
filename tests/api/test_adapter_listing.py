"""GET /adapters a page at a time: limits, the cursor round trip, deletions meanwhile, bad input."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from app.adapters.store import AdapterStore
from tests.conftest import AdapterFactory

NAMES = [f"task{i}" for i in range(7)]


@pytest.fixture
def listed(store: AdapterStore, make_adapter: AdapterFactory, client: TestClient) -> TestClient:
    for i, name in enumerate(NAMES):
        make_adapter(store, name, seed=i)
    make_adapter(store, "task1", seed=9,
                 metrics={"validation": {"epoch": 2, "accuracy": 0.9}, "best_epoch": 2})
    assert client.post("/adapters/reload").json() == {"changed": True, "adapters": 7,
                                                      "versions": 8}
    return client


def _walk(client: TestClient, **params: str | int) -> list[list[str]]:
    """Every page's names, following next_cursor to the end."""
    pages: list[list[str]] = []
    cursor = None
    while True:
        body = client.get("/adapters", params={**params, "cursor": cursor} if cursor
                          else params).json()
        pages.append([a["name"] for a in body["adapters"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages


def test_default_page_holds_every_field(listed: TestClient) -> None:
    body = listed.get("/adapters").json()
    assert body["next_cursor"] is None and [a["name"] for a in body["adapters"]] == NAMES
    task1 = body["adapters"][1]
    assert task1["versions"] == [1, 2] and task1["latest_version"] == 2
    assert task1["task_type"] == "classification" and task1["labels"] == ["neg", "pos"]
    assert task1["created_at"]
    stored = listed.get("/adapters/task1").json()
    assert task1["metrics"] == stored["metrics"]["validation"] == {"epoch": 2, "accuracy": 0.9}
    assert task1["size_bytes"] == AdapterStore(listed.app.state.services.settings.adapters_dir
                                               ).weights_path("task1", 2).stat().st_size
    assert task1["tier"] == stored["tier"]


def test_search_finds_names_holding_the_text_a_page_at_a_time(
        store: AdapterStore, make_adapter: AdapterFactory, client: TestClient) -> None:
    for i, name in enumerate(["spam-en", "ham", "spam-de", "news-spam", "sentiment"]):
        make_adapter(store, name, seed=i)
    client.post("/adapters/reload")
    assert _walk(client, contains="spam", limit=2) == [["news-spam", "spam-de"], ["spam-en"]]
    assert _walk(client, contains="spam", prefix="spam") == [["spam-de", "spam-en"]]
    assert _walk(client, contains="zzz") == [[]]
    bad = client.get("/adapters", params={"contains": "Spam!"})
    assert bad.status_code == 422 and "contains" in bad.text


@pytest.mark.parametrize(("limit", "pages"), [
    (1, [[n] for n in NAMES]),
    (3, [NAMES[:3], NAMES[3:6], NAMES[6:]]),
    (7, [NAMES]),
    (1000, [NAMES]),
])
def test_cursor_round_trip_visits_each_name_once(listed: TestClient, limit: int,
                                                 pages: list[list[str]]) -> None:
    assert _walk(listed, limit=limit) == pages


def test_names_deleted_between_pages_do_not_disturb_the_walk(listed: TestClient) -> None:
    first = listed.get("/adapters", params={"limit": 3}).json()
    assert listed.delete("/adapters/task2").status_code == 200  # the cursor's own name
    assert listed.delete("/adapters/task3").status_code == 200  # the next page's first
    second = listed.get("/adapters", params={"limit": 3, "cursor": first["next_cursor"]}).json()
    assert [a["name"] for a in second["adapters"]] == ["task4", "task5", "task6"]
    assert second["next_cursor"] is None


def test_prefix_keeps_matching_names(listed: TestClient, store: AdapterStore,
                                     make_adapter: AdapterFactory) -> None:
    make_adapter(store, "other")
    assert _walk(listed, prefix="task", limit=4) == [NAMES[:4], NAMES[4:]]
    assert _walk(listed, prefix="oth") == [["other"]]
    assert _walk(listed, prefix="zzz") == [[]]


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(("params", "field"), [
    ({"limit": 0}, "limit"),
    ({"limit": 1001}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"cursor": "!!not-base64!!"}, "cursor"),
    ({"cursor": _b64("../etc")}, "cursor"),
    ({"cursor": "x" * 101}, "cursor"),
    ({"prefix": "UPPER"}, "prefix"),
])
def test_bad_limit_cursor_or_prefix_is_a_422_naming_the_field(
        listed: TestClient, params: dict[str, str | int], field: str) -> None:
    r = listed.get("/adapters", params=params)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error"
    assert [d["field"] for d in error["details"]] == [field]


def test_a_version_copied_by_hand_is_listed_and_served_after_a_reload(
        listed: TestClient, store: AdapterStore) -> None:
    import shutil

    shutil.copytree(store.root / "task0" / "v1", store.root / "task9" / "v1")
    assert listed.post("/predict/task9", json={"inputs": "x"}).status_code == 404
    assert "task9" not in [a["name"] for a in listed.get("/adapters").json()["adapters"]]
    assert listed.post("/adapters/reload").json() == {"changed": True, "adapters": 8,
                                                      "versions": 9}
    assert listed.get("/adapters", params={"prefix": "task9"}).json()["adapters"][0][
        "versions"] == [1]
    assert listed.post("/predict/task9", json={"inputs": "x"}).status_code == 200
