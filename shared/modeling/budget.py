"""Memory budget: will this variant fit the target hardware? (pure; used by fitting and by selection)

budget = params x bytes/param x (1 + overhead) + activations at the serving batch and sequence + a
fixed runtime term. For decoders the activations are the KV cache (2 x layers x kv_heads x head_dim x
context x batch x bytes) plus one layer's working set and the last position's logits; for encoders one
layer's working set. Overhead (allocator slack, runtime buffers, framework) is 20-40% in practice; 30% is
the default. Quantization comes before sharding/offload because it keeps a single-device deployment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from weightflow.contracts.fitting import MemoryBudget

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
    kv_heads: int = 0  # decoders: key/value heads (grouped-query attention keeps fewer than heads)
    head_dim: int = 0
    vocab: int = 0
    tied: bool = False  # the output layer shares the input embedding's weights

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Architecture:
        hidden = int(config.get("hidden_size") or config.get("d_model") or config["n_embd"])
        heads = int(config.get("num_attention_heads") or config.get("n_head") or 1)
        return cls(
            hidden=hidden,
            layers=int(config.get("num_hidden_layers") or config.get("n_layer") or config["num_layers"]),
            heads=heads,
            intermediate=int(config.get("intermediate_size") or 4 * hidden),
            is_decoder=bool(config.get("is_decoder")) or "CausalLM" in "".join(config.get("architectures") or []),
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            vocab=int(config.get("vocab_size") or 0),
            tied=bool(config.get("tie_word_embeddings", False)),
        )

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden


def kv_cache_bytes(arch: Architecture, *, batch: int, seq: int, bytes_per_value: float = 4.0) -> int:
    """2 (keys and values) x layers x kv_heads x head_dim x context x batch x bytes."""
    return int(2 * arch.layers * arch.kv_heads * arch.head_dim * seq * batch * bytes_per_value)


def activation_bytes(arch: Architecture, *, batch: int = SERVING_BATCH, seq: int = SERVING_SEQ,
                     bytes_per_value: float = 4.0) -> int:
    """Decoders keep a KV cache for every layer, plus one layer's working set and the last position's
    logits; encoders hold one layer's activations at a time."""
    per_token = 4 * arch.hidden + arch.intermediate
    attention = arch.heads * seq * seq
    working = int(batch * (seq * per_token + attention) * bytes_per_value)
    if arch.is_decoder:
        logits = int(batch * arch.vocab * bytes_per_value)
        return kv_cache_bytes(arch, batch=batch, seq=seq, bytes_per_value=bytes_per_value) + working + logits
    return working


def memory_budget(variant: str, params: int, arch: Architecture, budget_bytes: int, *,
                  bytes_per_param: float | None = None, weight_bytes: int | None = None,
                  overhead: float = DEFAULT_OVERHEAD, batch: int = SERVING_BATCH,
                  seq: int = SERVING_SEQ, runtime_bytes: int = 0) -> MemoryBudget:
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
    total = int(weights * (1 + overhead)) + act + runtime_bytes
    return MemoryBudget(variant=variant, params=params, bytes_per_param=round(weights / params, 4),
                        weight_bytes=weights, overhead_fraction=overhead, activation_bytes=act,
                        runtime_bytes=runtime_bytes, total_bytes=total, budget_bytes=budget_bytes,
                        fits=total <= budget_bytes)


def describe(b: MemoryBudget) -> str:
    verdict = "fits" if b.fits else "does not fit"
    runtime = f" + {b.runtime_bytes / MB:.1f} MB runtime" if b.runtime_bytes else ""
    return (f"{b.variant}: {b.weight_bytes / MB:.1f} MB weights x {1 + b.overhead_fraction:.2f} + "
            f"{b.activation_bytes / MB:.1f} MB activations{runtime} = {b.total_bytes / MB:.1f} MB "
            f"{verdict} in {b.budget_bytes / MB:.0f} MB")


