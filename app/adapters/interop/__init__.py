"""Adapters saved by other libraries (AdapterHub's `adapters`, Hugging Face PEFT): converted
once into this service's own format on import, and back into the library's on export.

Each library has its module here with `convert(directory, base) -> Converted` and
`export(meta, tensors, base) -> dict[str, bytes]`. A converter refuses (UnsupportedAdapterError,
422) every option it cannot compute exactly, naming the option and what is supported: an
imported adapter is never served wrong.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from safetensors.torch import load as st_load
from torch import Tensor

from app.adapters.format import AdapterMetadata, encode, new_metadata
from app.errors import IncompatibleAdapterError, InvalidAdapterError, UnsupportedAdapterError
from app.model.adapter import AdapterConfig
from app.model.encoder import BaseModelInfo
from app.tasks import HeadConfig

Library = Literal["adapterhub", "peft"]
LIBRARIES: tuple[str, ...] = get_args(Library)
CONFIG_FILE = "adapter_config.json"


@dataclass(frozen=True)
class BaseContext:
    """What a conversion needs to know about the served base."""

    info: BaseModelInfo
    vocab_size: int
    pooler: dict[str, Tensor] | None  # the checkpoint's pooler dense (weight, bias), if any


@dataclass(frozen=True)
class ClaimedBase:
    """What the library's files say about the base they were trained on (None: not said)."""

    name: str | None = None
    model_type: str | None = None
    hidden_size: int | None = None
    num_layers: int | None = None
    vocab_size: int | None = None


@dataclass
class Converted:
    """An imported adapter in this service's terms, ready for the store."""

    adapter: AdapterConfig
    head: HeadConfig
    tensors: dict[str, Tensor]  # "adapter.*" and "head.*" names, as format.join makes them
    source: dict[str, Any]  # recorded in the metadata: library, its config, files read
    base: ClaimedBase = field(default_factory=ClaimedBase)


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in the file at `path`."""
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidAdapterError(f"{path.name} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InvalidAdapterError(f"{path.name} must be a JSON object")
    return data


def read_weights(directory: Path, names: tuple[str, ...]) -> tuple[dict[str, Tensor], str]:
    """A state dict (float32) from the first of `names` that `directory` holds (safetensors, or
    torch.save read with weights_only=True), and that file's name."""
    path = next((directory / n for n in names if (directory / n).is_file()), None)
    if path is None:
        raise InvalidAdapterError(f"no weights file: expected {' or '.join(names)}")
    try:
        state = (st_load(path.read_bytes()) if path.suffix == ".safetensors"
                 else torch.load(path, weights_only=True, map_location="cpu"))
    except Exception as exc:  # pickle, safetensors and torch raise their own error types
        raise InvalidAdapterError(f"{path.name}: cannot read tensors ({exc})") from exc
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise InvalidAdapterError(f"{path.name} is not a state dict of named tensors")
    return {k: v.detach().float() for k, v in state.items()}, path.name


def read_labels(config: dict[str, Any], n: int, where: str) -> list[str]:
    """Class names in output order from a config's id2label (or label2id); transformers'
    LABEL_i when it has neither."""
    id2label, label2id = config.get("id2label"), config.get("label2id")
    try:
        if isinstance(id2label, dict):
            names = {int(i): str(label) for i, label in id2label.items()}
        elif isinstance(label2id, dict):
            names = {int(i): str(label) for label, i in label2id.items()}
        else:
            return [f"LABEL_{i}" for i in range(n)]
    except (TypeError, ValueError) as exc:
        raise InvalidAdapterError(f"{where}: label ids must be integers ({exc})") from exc
    if sorted(names) != list(range(n)) or len(set(names.values())) != n:
        raise InvalidAdapterError(f"{where}: labels {str(names)[:200]} are not {n} distinct names "
                                  f"with ids 0..{n - 1}")
    return [names[i] for i in range(n)]


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise InvalidAdapterError(
            f"no {CONFIG_FILE} in the uploaded directory: expected one saved by AdapterHub "
            f"(model.save_adapter(dir, name, with_head=True)) or PEFT (model.save_pretrained(dir))")
    return read_json(path)


def detect(directory: Path) -> Library:
    """Which library saved `directory`, from its adapter_config.json."""
    config = read_config(directory)
    if "peft_type" in config:
        return "peft"
    if isinstance(config.get("config"), dict) and ("model_type" in config or "name" in config):
        return "adapterhub"
    raise InvalidAdapterError(
        f"{CONFIG_FILE} is neither AdapterHub's (with 'config', 'model_type', 'name') nor PEFT's "
        f"(with 'peft_type'); found keys {sorted(config)[:10]}")


def _module(library: str) -> Any:
    if library not in LIBRARIES:
        raise UnsupportedAdapterError(f"format must be one of {list(LIBRARIES)}, got {library!r}")
    return importlib.import_module(f"app.adapters.interop.{library}")


def convert(directory: Path, base: BaseContext) -> Converted:
    """The adapter saved in `directory` by either library, converted."""
    converted: Converted = _module(detect(directory)).convert(directory, base)
    return converted


def export(library: str, meta: AdapterMetadata, tensors: dict[str, Tensor],
           base: BaseContext) -> dict[str, bytes]:
    """The files the library's loader reads (file name -> bytes), for one stored adapter."""
    files: dict[str, bytes] = _module(library).export(meta, tensors, base)
    return files


def _same_checkpoint(claimed: str, served: str) -> bool:
    """Names of one checkpoint: equal, or one a hub id / path ending in the other."""
    a, b = claimed.rstrip("/").lower(), served.rstrip("/").lower()
    return a == b or a.rsplit("/", 1)[-1] == b.rsplit("/", 1)[-1]


def compatibility(claimed: ClaimedBase, base: BaseContext, strict: bool) -> list[str]:
    """Warnings for an adapter whose files describe `claimed`, served on `base`: different shapes
    are a 409 with both descriptions; another or no checkpoint name a warning (a 409 when
    `strict`), since a user may have copied the weights under another name."""
    info = base.info
    theirs = {"hidden size": claimed.hidden_size, "layers": claimed.num_layers,
              "vocabulary": claimed.vocab_size}
    ours = {"hidden size": info.hidden_size, "layers": info.num_layers,
            "vocabulary": base.vocab_size}
    differ = [k for k, v in theirs.items() if v is not None and v != ours[k]]
    if differ or (claimed.model_type and claimed.model_type != info.model_type):
        said = ", ".join(f"{k} {v}" for k, v in theirs.items() if v is not None)
        raise IncompatibleAdapterError(
            f"the adapter was trained on {claimed.name or 'an unnamed base'!r} "
            f"({claimed.model_type or 'type not given'}, {said}); the service runs {info.name!r} "
            f"({info.model_type}, " + ", ".join(f"{k} {v}" for k, v in ours.items()) + ")")
    if claimed.name and _same_checkpoint(claimed.name, info.name):
        return []
    warning = (f"its files name base {claimed.name!r}" if claimed.name
               else "its files name no base checkpoint") + (
        f"; the service runs {info.name!r} with the same shapes: predictions are only right if "
        f"that is the checkpoint it was trained on")
    if strict:
        raise IncompatibleAdapterError(f"{warning} (refused: STRICT_BASE=true)")
    return [warning]


def to_file(name: str, directory: Path, base: BaseContext, strict: bool) -> bytes:
    """The adapter saved in `directory` by either library as this service's weights file (its
    metadata records the source and the warnings), ready for the store's import."""
    converted = convert(directory, base)
    warnings = compatibility(converted.base, base, strict)
    meta = new_metadata(name, converted.head, converted.adapter, base.info,
                        source=converted.source, warnings=warnings)
    return encode(meta, converted.tensors)
