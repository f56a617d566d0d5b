"""A cost model of adapters: trainable parameters, and multiply-adds per token over the base's."""

from __future__ import annotations

import math

from app.model.adapter import AdapterConfig, Dims, tensor_shapes


def adapter_parameters(config: AdapterConfig, dims: Dims) -> int:
    """Numbers in the adapter's tensors (its trainable parameters, the head's not counted)."""
    return sum(math.prod(shape) for shape in tensor_shapes(config, dims).values())


def adapter_macs(config: AdapterConfig, dims: Dims) -> int:
    """Multiply-adds the adapter adds per token: one per element of each weight matrix (its
    biases, layer norms and activation are noise beside them)."""
    return sum(math.prod(shape) for shape in tensor_shapes(config, dims).values()
               if len(shape) == 2)


def base_macs(dims: Dims) -> int:
    """Multiply-adds of the frozen base per token: per layer the four attention projections
    (4 H^2) and the feed-forward pair (2 H I); attention scores grow with the sequence and are
    left out, which makes the adapter's share an upper bound at long inputs."""
    h = dims.hidden_size
    i = dims.intermediate_size or 4 * h
    return dims.num_layers * (4 * h * h + 2 * h * i)


def relative_cost(config: AdapterConfig, dims: Dims) -> float:
    """Predicted forward cost of base + adapter over the bare base (1.0 = free): a FLOP model,
    not a measurement, so the same config always costs the same and a search that weighs cost
    stays reproducible. LoRA is counted unmerged, as it is served (per-row routing)."""
    return 1.0 + adapter_macs(config, dims) / base_macs(dims)
