"""The service on an S3 store (moto as the test double): adapters trained by a worker process or
imported are served, and seen by a second node; a store that cannot be reached stops the start;
an outage answers 503 only for what a node has no copy of."""

from __future__ import annotations

import socket
from pathlib import Path

import boto3
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.errors import StoreUnavailableError
from app.main import create_app
from tests.api.helpers import submit_job, wait_for_job
from tests.conftest import AdapterFactory


def _settings(train_settings: Settings, s3_url: str, node: Path) -> Settings:
    return train_settings.model_copy(update={"adapters_dir": s3_url, "adapter_cache_dir": node,
                                             "preload_adapters": False})


@pytest.mark.slow
def test_trained_and_imported_adapters_are_served_from_s3(train_settings: Settings, s3_url: str,
                                                          tmp_path: Path) -> None:
    node_a = _settings(train_settings, s3_url, tmp_path / "node-a")
    with TestClient(create_app(node_a)) as api:
        job = submit_job(api)
        done = wait_for_job(api, job["job_id"], ("succeeded", "failed"))
        assert done["status"] == "succeeded", done["error"]
        assert done["adapter"] == {"name": "senti", "version": 1}
        texts = {"inputs": ["the film was great", "awful"]}
        trained = api.post("/predict/senti", json=texts)
        assert trained.status_code == 200 and trained.json()["version"] == 1

        weights = api.get("/adapters/senti/download").content
        imported = api.put("/adapters/copy", content=weights,
                           headers={"Content-Type": "application/octet-stream"})
        assert imported.status_code == 201, imported.text
        assert api.post("/predict/copy", json=texts).json()["predictions"] == \
            trained.json()["predictions"]
        assert (tmp_path / "node-a" / ".jobs.sqlite3").exists()  # the jobs stay on the node

    node_b = _settings(train_settings, s3_url, tmp_path / "node-b")  # another machine
    with TestClient(create_app(node_b)) as other:
        assert [a["name"] for a in other.get("/adapters").json()["adapters"]] == ["copy", "senti"]
        assert other.post("/predict/senti", json=texts).json() == trained.json()
        assert other.get("/adapters/senti/download").content == weights
        assert other.delete("/adapters/copy").status_code == 200
        assert other.post("/predict/copy", json=texts).status_code == 404


def test_a_store_that_cannot_be_reached_stops_the_start(settings: Settings, s3_endpoint: str,
                                                        tmp_path: Path) -> None:
    cfg = settings.model_copy(update={"adapters_dir": "s3://missing-bucket/adapters",
                                      "adapter_cache_dir": tmp_path / "node"})
    with pytest.raises(StoreUnavailableError, match=r"adapter store s3://missing-bucket/adapters \(endpoint "
                                        r"http://127.0.0.1:\d+\): the bucket 'missing-bucket' "
                                        r"does not exist"), TestClient(create_app(cfg)):
        pass


def test_an_outage_answers_503_for_adapters_the_node_has_no_copy_of(
        settings: Settings, s3_url: str, tmp_path: Path, make_adapter: AdapterFactory) -> None:
    cfg = settings.model_copy(update={"adapters_dir": s3_url,
                                      "adapter_cache_dir": tmp_path / "node"})
    with TestClient(create_app(cfg)) as api:
        store = api.app.state.services.store  # type: ignore[attr-defined]
        make_adapter(store, "served", seed=1)
        make_adapter(store, "remote", seed=2)
        store.cache.evict(("remote", 1))  # as if another node had stored it
        assert api.post("/adapters/reload").json()["versions"] == 2
        assert api.post("/predict/served", json={"inputs": "fine"}).status_code == 200

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # nothing listens there once it is closed
        store.bucket.client = boto3.session.Session().client(
            "s3", endpoint_url=f"http://127.0.0.1:{port}")  # S3 stops answering this node
        assert api.post("/predict/served", json={"inputs": "fine"}).status_code == 200
        down = api.post("/predict/remote", json={"inputs": "fine"})
        assert down.status_code == 503 and down.json()["error"]["code"] == "store_unavailable"
        assert "cannot read remote/v1/manifest.json" in down.json()["error"]["message"]
        assert api.get("/adapters").json()["adapters"][0]["name"] == "remote"
        assert api.get("/readyz").status_code == 200  # the node goes on serving what it has
