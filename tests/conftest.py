"""Shared fixtures: a tiny random BERT on disk, its encoder, stores and adapters made on the fly."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.adapters.format import AdapterMetadata, join, new_metadata
from app.adapters.store import AdapterStore
from app.config import Settings
from app.main import create_app
from app.model.adapter import AdapterConfig, AdapterSet
from app.model.encoder import FrozenEncoder
from app.tasks import HeadConfig, build_head
from tests.tiny import build_tiny_bert


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def encoder(tiny_model_dir: Path) -> FrozenEncoder:
    return FrozenEncoder.load(str(tiny_model_dir))


def random_adapter(encoder: FrozenEncoder, config: AdapterConfig | None = None,
                   head: HeadConfig | None = None, seed: int = 0, scale: float = 0.3
                   ) -> tuple[AdapterSet, torch.nn.Module, HeadConfig]:
    """An adapter and head with random (not identity) weights, so each task answers differently."""
    torch.manual_seed(seed)
    config = config or AdapterConfig()
    head = head or HeadConfig(task_type="classification", labels=["neg", "pos"])
    adapter = AdapterSet(config, encoder.info.dims)
    for p in adapter.parameters():
        torch.nn.init.normal_(p, std=scale)
    head_module = build_head(head, encoder.info.hidden_size)
    for p in head_module.parameters():
        torch.nn.init.normal_(p, std=scale)
    return adapter.eval(), head_module.eval(), head


AdapterFactory = Callable[..., AdapterMetadata]


@pytest.fixture
def make_adapter(encoder: FrozenEncoder) -> AdapterFactory:
    """Store a random adapter: make_adapter(store, name, seed=, config=, head=, metrics=)."""

    def make(store: AdapterStore, name: str, seed: int = 0, config: AdapterConfig | None = None,
             head: HeadConfig | None = None, metrics: dict[str, object] | None = None) -> AdapterMetadata:
        adapter, head_module, head_cfg = random_adapter(encoder, config, head, seed)
        meta = new_metadata(name, head_cfg, adapter.config, encoder.info, metrics)
        return store.save(meta, join(adapter.state_dict(), head_module.state_dict()))

    return make


@pytest.fixture
def settings(tiny_model_dir: Path, tmp_path: Path) -> Settings:
    return Settings(base_model=str(tiny_model_dir), adapters_dir=tmp_path / "store",
                    store_poll_seconds=0, num_threads=1, max_inputs_per_request=8,
                    max_text_chars=200, max_resident_adapters=4, batch_wait_ms=1,
                    preload_adapters=False)


@pytest.fixture
def store(settings: Settings) -> AdapterStore:
    return AdapterStore(settings.adapters_dir)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A local S3-compatible server (moto) for the session; boto3 finds it through
    AWS_ENDPOINT_URL, as it would find MinIO."""
    from tests import s3  # boto3 and moto are imported by the tests that use them only

    with pytest.MonkeyPatch.context() as env, s3.serve() as endpoint:
        for name, value in {**s3.ENVIRONMENT, "AWS_ENDPOINT_URL": endpoint}.items():
            env.setenv(name, value)
        yield endpoint


@pytest.fixture
def s3_url(s3_endpoint: str) -> str:
    """ADAPTERS_DIR of a store in a new, empty bucket."""
    from tests import s3

    bucket = f"adapters-{uuid.uuid4().hex[:12]}"
    s3.make_bucket(bucket)
    return f"s3://{bucket}/store"
