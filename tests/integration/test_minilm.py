"""The embedded all-MiniLM-L6-v2: loads offline, adapters leave it unchanged until trained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.adapters.format import encode, join, new_metadata
from app.config import Settings
from app.main import create_app
from app.model.adapter import AdapterConfig, AdapterSet, Dims
from app.model.encoder import EMBEDDED_MODEL_NAME, FrozenEncoder
from app.tasks import HeadConfig, build_head

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def minilm() -> FrozenEncoder:
    return FrozenEncoder.load("")


def test_embedded_model_loads_offline(minilm: FrozenEncoder) -> None:
    info = minilm.info
    assert (info.name, info.model_type, info.hidden_size, info.num_layers) == (
        EMBEDDED_MODEL_NAME, "bert", 384, 6)
    assert len(info.fingerprint) == 64


@torch.inference_mode()
def test_identity_adapter_and_mixed_rows_on_minilm(minilm: FrozenEncoder) -> None:
    batch = minilm.tokenizer.collate(minilm.tokenizer.encode(
        ["a gripping, funny film", "dull and slow", "the cast is superb"]))
    adapter = AdapterSet(AdapterConfig(), Dims(384, 6, 1536)).eval()
    torch.testing.assert_close(minilm.forward(batch, adapter), minilm.forward(batch))


def test_import_and_predict_through_the_api(minilm: FrozenEncoder, tmp_path: Path) -> None:
    torch.manual_seed(0)
    adapter = AdapterSet(AdapterConfig(), Dims(384, 6, 1536))
    head_cfg = HeadConfig(task_type="classification", labels=["negative", "positive"])
    head = build_head(head_cfg, 384)
    data = encode(new_metadata("sst2", head_cfg, adapter.config, minilm.info),
                  join(adapter.state_dict(), head.state_dict()))
    settings = Settings(adapters_dir=tmp_path / "store", store_poll_seconds=0)
    with TestClient(create_app(settings)) as client:
        assert client.put("/adapters/sst2", content=data).status_code == 201
        body = client.post("/predict/sst2", json={"inputs": ["a gripping film", "dull"]}).json()
        assert [set(p["scores"]) for p in body["predictions"]] == [{"negative", "positive"}] * 2
