"""The adapter file format: metadata, safetensors encoding, and validation before allocation."""

from __future__ import annotations

import hashlib
import json
import struct
from datetime import datetime, timezone
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from app.constants import (
    ADAPTER_PREFIX,
    FORMAT_VERSION,
    HEAD_PREFIX,
    MAX_SAFETENSORS_HEADER_BYTES,
    NAME_PATTERN,
    SAFETENSORS_METADATA_KEY,
)
from app.errors import IncompatibleAdapterError, InvalidAdapterError
from app.model.adapter import AdapterConfig, Dims, tensor_shapes
from app.model.encoder import BaseModelInfo
from app.tasks import HeadConfig, TaskType, build_head, get_task

SAFETENSORS_DTYPES = {"F32": torch.float32}


class BaseModelRef(BaseModel):
    """The base an adapter was trained on."""

    name: str
    model_type: str
    hidden_size: int = Field(ge=1)
    num_layers: int = Field(ge=1)
    fingerprint: str
    intermediate_size: int = Field(0, ge=0, description="0: not recorded (older files).")

    @property
    def dims(self) -> Dims:
        return Dims(self.hidden_size, self.num_layers, self.intermediate_size)


class AdapterMetadata(BaseModel):
    """Everything known about one stored adapter version (the JSON file next to the weights)."""

    model_config = ConfigDict(extra="ignore")

    format_version: int = FORMAT_VERSION
    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(0, ge=0)
    task_type: TaskType
    labels: list[str] = Field(default_factory=list)
    adapter_config: AdapterConfig = Field(default_factory=AdapterConfig)
    head_config: HeadConfig
    base_model: BaseModelRef
    metrics: dict[str, Any] = Field(default_factory=dict)
    description: str = ""
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    weights_sha256: str = ""
    source: dict[str, Any] = Field(default_factory=dict)  # imported: the library and its config
    warnings: list[str] = Field(default_factory=list)  # e.g. trained on another checkpoint

    @property
    def stored_epoch_metrics(self) -> dict[str, Any]:
        """The validation metrics of the epoch that was stored ({} for an imported adapter)."""
        found = self.metrics.get("validation")
        return found if isinstance(found, dict) else {}

    @model_validator(mode="after")
    def _check(self) -> AdapterMetadata:
        if self.format_version > FORMAT_VERSION:
            raise ValueError(f"format_version {self.format_version} is newer than this service "
                             f"understands ({FORMAT_VERSION})")
        if self.head_config.task_type != self.task_type:
            raise ValueError(f"head_config.task_type {self.head_config.task_type!r} differs from "
                             f"task_type {self.task_type!r}")
        if self.head_config.labels != self.labels:
            raise ValueError("head_config.labels differ from labels")
        get_task(self.task_type).check_labels(self.labels)
        ffn = {"intermediate", "output"} & set(self.adapter_config.sites())
        if ffn and not self.base_model.intermediate_size:
            raise ValueError(f"LoRA on {sorted(ffn)} needs base_model.intermediate_size")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        return self

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor name (with prefix) the weights file must hold, and its shape."""
        ref = self.base_model
        shapes = {ADAPTER_PREFIX + k: v for k, v in
                  tensor_shapes(self.adapter_config, ref.dims).items()}
        with torch.device("meta"):  # shapes only: nothing is allocated
            head = build_head(self.head_config, ref.hidden_size)
        shapes.update({HEAD_PREFIX + k: tuple(v.shape) for k, v in head.state_dict().items()})
        return shapes


def new_metadata(name: str, head: HeadConfig, adapter: AdapterConfig, base: BaseModelInfo,
                 metrics: dict[str, Any] | None = None, description: str = "",
                 source: dict[str, Any] | None = None, warnings: list[str] | None = None
                 ) -> AdapterMetadata:
    """Metadata for an adapter about to be stored (the store assigns version and checksum)."""
    return AdapterMetadata(
        name=name, task_type=head.task_type, labels=head.labels, adapter_config=adapter,
        head_config=head, base_model=BaseModelRef.model_validate(base.as_dict()), metrics=metrics or {},
        description=description, source=source or {}, warnings=warnings or [],
    )


def parse_metadata(raw: bytes | str | dict[str, Any], source: str) -> AdapterMetadata:
    try:
        data = raw if isinstance(raw, dict) else json.loads(raw)
        return AdapterMetadata.model_validate(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidAdapterError(f"{source}: metadata is not valid JSON ({exc})") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'metadata'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidAdapterError(f"{source}: invalid metadata: {problems}") from exc


def encode(meta: AdapterMetadata, tensors: dict[str, Tensor]) -> bytes:
    """safetensors bytes; the metadata (without its own checksum) rides in the header."""
    contiguous = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    return st_save(contiguous, metadata={SAFETENSORS_METADATA_KEY: _embedded(meta)})


def _embedded(meta: AdapterMetadata) -> str:
    """The metadata as the weights file carries it: without its own checksum."""
    return json.dumps(meta.model_dump(mode="json", exclude={"weights_sha256"}))


def with_metadata(data: bytes, header: dict[str, Any], meta: AdapterMetadata, source: str
                  ) -> bytes:
    """`data` (a file read_header accepted) with `meta` embedded instead, tensor bytes untouched.

    What an import stores: re-encoding the tensors would cost more than the checks. The tensor
    entries and their offsets stay as they are, so the new header is checked like any other.
    """
    (size,) = struct.unpack("<Q", data[:8])
    extra = dict(header.get("__metadata__") or {})
    extra[SAFETENSORS_METADATA_KEY] = _embedded(meta)
    raw = json.dumps({**header, "__metadata__": extra}, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # tensor data 8-byte aligned, as safetensors writes it
    out = struct.pack("<Q", len(raw)) + raw + data[8 + size:]
    check_tensors(read_header(out, source), meta, source)
    return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_header(data: bytes, source: str) -> dict[str, Any]:
    """Parse and bound-check the safetensors header without touching the tensor bytes."""
    if len(data) < 8:
        raise InvalidAdapterError(f"{source}: file is truncated ({len(data)} bytes)")
    (size,) = struct.unpack("<Q", data[:8])
    if size > MAX_SAFETENSORS_HEADER_BYTES:
        raise InvalidAdapterError(f"{source}: not a valid safetensors file: header of {size} "
                                  f"bytes exceeds the limit of "
                                  f"{MAX_SAFETENSORS_HEADER_BYTES}")
    if 8 + size > len(data):
        raise InvalidAdapterError(f"{source}: file is truncated (header needs {size} bytes)")
    try:
        header = json.loads(data[8:8 + size])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidAdapterError(f"{source}: not a safetensors file (bad header)") from exc
    if not isinstance(header, dict):
        raise InvalidAdapterError(f"{source}: not a safetensors file (header is not an object)")
    body = len(data) - 8 - size
    end = max((e.get("data_offsets", [0, 0])[1] for k, e in header.items()
               if k != "__metadata__" and isinstance(e, dict)), default=0)
    if end != body:
        raise InvalidAdapterError(f"{source}: file is truncated or padded: tensors need {end} "
                                  f"bytes, the file holds {body}")
    return header


def embedded_metadata(header: dict[str, Any], source: str) -> AdapterMetadata:
    raw = (header.get("__metadata__") or {}).get(SAFETENSORS_METADATA_KEY)
    if raw is None:
        raise InvalidAdapterError(f"{source}: the safetensors header carries no adapter metadata "
                                  f"(key {SAFETENSORS_METADATA_KEY!r} in __metadata__)")
    return parse_metadata(raw, source)


def check_tensors(header: dict[str, Any], meta: AdapterMetadata, source: str) -> None:
    """Names, shapes and dtypes in the header against what the metadata implies."""
    expected = meta.expected_shapes()
    found = {k: v for k, v in header.items() if k != "__metadata__"}
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        raise InvalidAdapterError(
            f"{source}: tensor names do not match the adapter config: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}"
        )
    for name, shape in expected.items():
        entry = found[name]
        if entry.get("dtype") not in SAFETENSORS_DTYPES:
            raise InvalidAdapterError(f"{source}: tensor {name} has dtype {entry.get('dtype')}, "
                                      f"expected F32")
        if tuple(entry.get("shape", ())) != shape:
            raise InvalidAdapterError(f"{source}: tensor {name} has shape "
                                      f"{tuple(entry.get('shape', ()))}, expected {shape}")


def check_base(meta: AdapterMetadata, base: BaseModelInfo) -> None:
    ref = meta.base_model
    if (ref.hidden_size, ref.num_layers) != (base.hidden_size, base.num_layers) or (
            ref.intermediate_size and ref.intermediate_size != base.intermediate_size):
        raise IncompatibleAdapterError(
            f"adapter {meta.name!r} v{meta.version} was trained for a base with hidden size "
            f"{ref.hidden_size} and {ref.num_layers} layers; the service runs {base.name!r} "
            f"with hidden size {base.hidden_size} and {base.num_layers} layers"
        )
    problem = base.unsupported(meta.adapter_config)
    if problem is not None:
        raise IncompatibleAdapterError(f"adapter {meta.name!r} v{meta.version}: {problem}")
    if ref.fingerprint != base.fingerprint:
        raise IncompatibleAdapterError(
            f"adapter {meta.name!r} v{meta.version} was trained on base {ref.name!r} "
            f"(fingerprint {ref.fingerprint[:12]}), the service runs {base.name!r} "
            f"(fingerprint {base.fingerprint[:12]})"
        )


def decode(data: bytes, meta: AdapterMetadata, source: str) -> dict[str, Tensor]:
    """Validated tensors: header checked first, then loaded and checked for finite values."""
    check_tensors(read_header(data, source), meta, source)
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise InvalidAdapterError(f"{source}: cannot read tensors ({exc})") from exc
    if not torch.isfinite(torch.cat([t.reshape(-1) for t in tensors.values()])).all():
        for name, t in tensors.items():  # only on failure: find the tensor to name it
            if not torch.isfinite(t).all():
                bad = int((~torch.isfinite(t)).sum())
                raise InvalidAdapterError(f"{source}: tensor {name} has {bad} non-finite values")
    return tensors


def split(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(adapter tensors, head tensors), prefixes removed."""
    adapter = {k[len(ADAPTER_PREFIX):]: v for k, v in tensors.items() if k.startswith(ADAPTER_PREFIX)}
    head = {k[len(HEAD_PREFIX):]: v for k, v in tensors.items() if k.startswith(HEAD_PREFIX)}
    return adapter, head


def join(adapter: dict[str, Tensor], head: dict[str, Tensor]) -> dict[str, Tensor]:
    return {**{ADAPTER_PREFIX + k: v for k, v in adapter.items()},
            **{HEAD_PREFIX + k: v for k, v in head.items()}}
