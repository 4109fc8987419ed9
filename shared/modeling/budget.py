"""Memory budget: will this variant fit the target hardware? (pure; used by fitting and by selection)

budget = params x bytes/param x (1 + overhead) + activation memory (KV cache for decoders) at the
serving batch. Overhead (allocator slack, runtime buffers, framework) is 20-40% in practice; 30% is
the default. Quantization comes before sharding/offload because it keeps a single-device deployment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from contracts.fitting import MemoryBudget

UNQUANTIZED_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0}
DEFAULT_OVERHEAD = 0.30
SERVING_BATCH = 8
SERVING_SEQ = 128
MB = 1024 * 1024


@dataclass(frozen=True)
class Architecture:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    is_decoder: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Architecture:
        hidden = int(config.get("hidden_size") or config.get("d_model") or config["n_embd"])
        return cls(
            hidden=hidden,
            layers=int(config.get("num_hidden_layers") or config.get("n_layer") or config["num_layers"]),
            heads=int(config.get("num_attention_heads") or config.get("n_head") or 1),
            intermediate=int(config.get("intermediate_size") or 4 * hidden),
            is_decoder=bool(config.get("is_decoder")) or "CausalLM" in "".join(config.get("architectures") or []),
        )


def activation_bytes(arch: Architecture, *, batch: int = SERVING_BATCH, seq: int = SERVING_SEQ,
                     bytes_per_value: float = 4.0) -> int:
    """Decoders keep a KV cache for every layer; encoders hold one layer's activations at a time."""
    if arch.is_decoder:
        return int(2 * arch.layers * arch.hidden * seq * batch * bytes_per_value)
    per_token = 4 * arch.hidden + arch.intermediate
    attention = arch.heads * seq * seq
    return int(batch * (seq * per_token + attention) * bytes_per_value)


def memory_budget(variant: str, params: int, arch: Architecture, budget_bytes: int, *,
                  bytes_per_param: float | None = None, weight_bytes: int | None = None,
                  overhead: float = DEFAULT_OVERHEAD, batch: int = SERVING_BATCH,
                  seq: int = SERVING_SEQ) -> MemoryBudget:
    """Predict peak serving memory; `weight_bytes` (measured on the saved variant) beats the nominal
    `bytes_per_param` (the scheme's, or fp32's) when known."""
    if params <= 0:
        raise ValueError("params must be positive")
    if weight_bytes is not None:
        weights = weight_bytes
    elif bytes_per_param is not None or variant in UNQUANTIZED_BYTES:
        weights = int(params * (bytes_per_param if bytes_per_param is not None else UNQUANTIZED_BYTES[variant]))
    else:
        raise ValueError(f"variant {variant!r} needs its bytes per parameter (the quantizer's) or its measured "
                         "weight_bytes")
    act = activation_bytes(arch, batch=batch, seq=seq)
    total = int(weights * (1 + overhead)) + act
    return MemoryBudget(variant=variant, params=params, bytes_per_param=round(weights / params, 4),
                        weight_bytes=weights, overhead_fraction=overhead, activation_bytes=act,
                        total_bytes=total, budget_bytes=budget_bytes, fits=total <= budget_bytes)


def describe(b: MemoryBudget) -> str:
    verdict = "fits" if b.fits else "does not fit"
    return (f"{b.variant}: {b.weight_bytes / MB:.1f} MB weights x {1 + b.overhead_fraction:.2f} + "
            f"{b.activation_bytes / MB:.1f} MB activations = {b.total_bytes / MB:.1f} MB "
            f"{verdict} in {b.budget_bytes / MB:.0f} MB")


