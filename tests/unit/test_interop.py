"""The seam for other libraries' adapters: which library saved a directory, and whether its base
fits the served one (shapes: 409; another checkpoint name: a warning, or 409 when strict)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.adapters import interop
from app.adapters.interop import BaseContext, ClaimedBase
from app.errors import IncompatibleAdapterError, InvalidAdapterError
from app.model.encoder import FrozenEncoder


def _dir(tmp_path: Path, config: object) -> Path:
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    return tmp_path


def test_detect_by_adapter_config(tmp_path: Path) -> None:
    assert interop.detect(_dir(tmp_path, {"peft_type": "LORA", "r": 8})) == "peft"
    assert interop.detect(_dir(tmp_path, {"config": {"architecture": "bottleneck"},
                                          "model_type": "bert", "name": "x"})) == "adapterhub"


@pytest.mark.parametrize(("config", "message"), [
    (None, "no adapter_config.json in the uploaded directory: expected one saved by AdapterHub"),
    ("{not json", "adapter_config.json is not valid JSON"),
    ([1, 2], "must be a JSON object"),
    ({"lora": 1}, r"neither AdapterHub's .* nor PEFT's .*found keys \['lora'\]"),
])
def test_what_is_not_a_library_directory_is_refused(tmp_path: Path, config: object,
                                                    message: str) -> None:
    if isinstance(config, str):
        (tmp_path / "adapter_config.json").write_text(config)
    elif config is not None:
        _dir(tmp_path, config)
    with pytest.raises(InvalidAdapterError, match=message):
        interop.detect(tmp_path)


def _base(encoder: FrozenEncoder) -> BaseContext:
    return BaseContext(encoder.info, int(encoder.model.config.vocab_size), encoder.pooler)


def test_same_shapes_and_checkpoint_need_no_warning(encoder: FrozenEncoder) -> None:
    info = encoder.info
    same = ClaimedBase(f"someone/{Path(info.name).name}", "bert", info.hidden_size,
                       info.num_layers)
    assert interop.compatibility(same, _base(encoder), strict=True) == []


@pytest.mark.parametrize("claimed", [ClaimedBase("bert-base-uncased"), ClaimedBase()])
def test_another_or_no_checkpoint_name_is_a_warning_or_refused_when_strict(
        encoder: FrozenEncoder, claimed: ClaimedBase) -> None:
    [warning] = interop.compatibility(claimed, _base(encoder), strict=False)
    said = "'bert-base-uncased'" if claimed.name else "no base checkpoint"
    assert said in warning and "with the same shapes" in warning
    with pytest.raises(IncompatibleAdapterError, match="refused: STRICT_BASE=true"):
        interop.compatibility(claimed, _base(encoder), strict=True)


@pytest.mark.parametrize("claimed", [
    ClaimedBase("bert-base-uncased", "bert", 768, 12, 30522),
    ClaimedBase("x", hidden_size=32, num_layers=2, vocab_size=7),
    ClaimedBase("x", model_type="roberta"),
])
def test_other_shapes_are_a_conflict_naming_both(encoder: FrozenEncoder,
                                                 claimed: ClaimedBase) -> None:
    with pytest.raises(IncompatibleAdapterError) as err:
        interop.compatibility(claimed, _base(encoder), strict=False)
    assert "the service runs" in err.value.message
    assert f"hidden size {encoder.info.hidden_size}" in err.value.message
