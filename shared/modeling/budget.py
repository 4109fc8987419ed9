"""Memory budget: will this variant fit the target hardware? (pure; used by fitting and by selection)

budget = weights x (1 + overhead) + activations at the serving batch and context + the scheme's working
memory + the runtime (the serving process's own: tokenizer, allocator, beyond the interpreter and torch;
the hardware's `runtime_mb` replaces the calibrated runtime when set). Each term is calibrated per device
against what fitting decides on, the peak a fresh process measures at the serving shape
(shared.modeling.peak; bench/RESULTS.md §15):

* weights: on CPU a checkpoint's safetensors are mapped, not copied, so they count once (overhead 0);
* activations, per sequence: one layer's working set (three intermediate-wide tensors of the MLP, six
  hidden-wide ones, query/key/value) plus, for an encoder, its attention scores (a padding mask keeps
  it on the math path); a decoder adds its KV cache for every layer and the last position's logits
  (generation runs a flash kernel on CPU, which never holds the scores);
* runtime: a fixed part, plus the loaded tokenizer, about 9x its tokenizer.json.

Quantization comes before sharding/offload because it keeps a single-device deployment. The prediction
orders the schemes and rules a variant out; the measured peak decides.
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
class DeviceCalibration:
    """What the measured peak holds beyond the formula's weights and activations, on one kind of device."""

    weight_overhead: float  # a fraction of the weights on top of them
    runtime_bytes: int  # the serving process's own memory beyond the interpreter, torch and transformers
    tokenizer_factor: float  # memory a loaded tokenizer takes per byte of its tokenizer.json
    calibrated: str  # where the numbers come from, for the budget's description


# CPU: fitted on 12 models x variants (encoders, decoders, int8, 4-bit) measured by the peak child, 2026-12-07,
# bench/RESULTS.md §15. CUDA: not calibrated (no GPU lent yet); the peak there is torch's allocator
# (`max_memory_allocated`), which sees neither the CUDA context nor the host's tokenizer, so the runtime term is
# 0 and the weights get accelerate's "add up to 20 %".
CALIBRATION = {
    "cpu": DeviceCalibration(weight_overhead=0.0, runtime_bytes=18 * MB, tokenizer_factor=9.0,
                             calibrated="calibrated on cpu, bench/RESULTS.md §15"),
    "cuda": DeviceCalibration(weight_overhead=0.20, runtime_bytes=0, tokenizer_factor=0.0,
                              calibrated="not calibrated on cuda yet"),
}


def calibration(device: str) -> DeviceCalibration:
    """The calibration of a device kind ("cuda:1" is "cuda")."""
    return CALIBRATION.get(device.split(":")[0], CALIBRATION["cpu"])


def tokenizer_bytes(file_sizes: Mapping[str, int]) -> int:
    """A checkpoint's tokenizer on disk, from its {file name: size}: tokenizer.json (what a fast tokenizer loads),
    else its vocabulary, merges and sentencepiece model files."""
    if "tokenizer.json" in file_sizes:
        return file_sizes["tokenizer.json"]
    return sum(size for name, size in file_sizes.items()
               if name.startswith(("vocab", "merges")) or name.endswith(".model"))


def runtime_bytes(device: str, tokenizer_bytes: int) -> int:
    """The serving process's own memory on `device` with a tokenizer of `tokenizer_bytes` (its tokenizer.json)."""
    cal = calibration(device)
    return int(cal.runtime_bytes + cal.tokenizer_factor * tokenizer_bytes)


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
    """One layer's working set per sequence (the MLP's three intermediate-wide tensors, six hidden-wide ones,
    query/key/value), an encoder's attention scores; a decoder's KV cache for every layer and last logits."""
    per_sequence = seq * (3 * arch.intermediate + 6 * arch.hidden + 3 * arch.heads * arch.head_dim)
    if not arch.is_decoder:
        return int(batch * (per_sequence + arch.heads * seq * seq) * bytes_per_value)
    logits = batch * arch.vocab
    return (int((batch * per_sequence + logits) * bytes_per_value)
            + kv_cache_bytes(arch, batch=batch, seq=seq, bytes_per_value=bytes_per_value))


def memory_budget(variant: str, params: int, arch: Architecture, budget_bytes: int, *,
                  bytes_per_param: float | None = None, weight_bytes: int | None = None,
                  overhead: float = DEFAULT_OVERHEAD, batch: int = SERVING_BATCH,
                  seq: int = SERVING_SEQ, runtime_bytes: int = 0, working_bytes: int = 0) -> MemoryBudget:
    """Predict peak serving memory; `weight_bytes` (measured on the saved variant) beats the nominal
    `bytes_per_param` (the scheme's, or fp32's) when known. `working_bytes`: what the scheme's own layers
    hold while they compute (a dequantized block of weights), counted with the activations."""
    if params <= 0:
        raise ValueError("params must be positive")
    if weight_bytes is not None:
        weights = weight_bytes
    elif bytes_per_param is not None or variant in UNQUANTIZED_BYTES:
        weights = int(params * (bytes_per_param if bytes_per_param is not None else UNQUANTIZED_BYTES[variant]))
    else:
        raise ValueError(f"variant {variant!r} needs its bytes per parameter (the quantizer's) or its measured "
                         "weight_bytes")
    act = activation_bytes(arch, batch=batch, seq=seq) + working_bytes
    total = int(weights * (1 + overhead)) + act + runtime_bytes
    return MemoryBudget(variant=variant, params=params, bytes_per_param=round(weights / params, 4),
                        weight_bytes=weights, overhead_fraction=overhead, activation_bytes=act,
                        runtime_bytes=runtime_bytes, total_bytes=total, budget_bytes=budget_bytes,
                        fits=total <= budget_bytes)


def calibrated_budget(variant: str, params: int, arch: Architecture, budget_bytes: int, *, device: str,
                      file_sizes: Mapping[str, int], seq: int, weight_bytes: int | None = None,
                      working_bytes: int = 0, runtime_override: int | None = None) -> MemoryBudget:
    """`memory_budget` with the device's calibration: its weight overhead, and its runtime for the checkpoint's
    tokenizer (`file_sizes`: {file name: size}) unless the hardware profile names one (`runtime_override`)."""
    runtime = runtime_bytes(device, tokenizer_bytes(file_sizes)) if runtime_override is None else runtime_override
    return memory_budget(variant, params, arch, budget_bytes, weight_bytes=weight_bytes, seq=seq,
                         overhead=calibration(device).weight_overhead, runtime_bytes=runtime,
                         working_bytes=working_bytes)


def describe(b: MemoryBudget) -> str:
    verdict = "fits" if b.fits else "does not fit"
    runtime = f" + {b.runtime_bytes / MB:.1f} MB runtime" if b.runtime_bytes else ""
    return (f"{b.variant}: {b.weight_bytes / MB:.1f} MB weights x {1 + b.overhead_fraction:.2f} + "
            f"{b.activation_bytes / MB:.1f} MB activations{runtime} = {b.total_bytes / MB:.1f} MB "
            f"{verdict} in {b.budget_bytes / MB:.0f} MB")


