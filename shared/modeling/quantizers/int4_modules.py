"""The torch side of the 4-bit schemes (shared.modeling.quantizers.compressed): load packed, serve packed.

transformers loads a compressed-tensors checkpoint by decompressing every layer to float once, at load:
a 4-bit SmolLM2-135M then holds fp32 weights (measured 650-850 MiB at the serving shape on CPU, over the
512 MB the reviews example plans for), so 4 bits saved nothing at run time. Here each quantized linear
layer keeps the checkpoint's own tensors (`weight_packed`, eight int4 a word, and its group scales) and
dequantizes its weight inside forward, with compressed-tensors' own decompressor (the same code and the same
numbers as transformers' load), for that one call only: the peak holds the packed weights, one layer's
float weight and the activations. It costs a dequantization per layer per call; no fp32 weight outlives it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import init_empty_weights
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme
from safetensors.torch import load_file
from torch import nn

PACKED_FORMAT = "pack-quantized"
TENSORS = ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point")


class Int4Linear(nn.Module):
    """nn.Linear whose weight stays packed (compressed-tensors' pack-quantized layout) and is dequantized
    per forward call, then dropped."""

    weight_packed: torch.Tensor
    weight_scale: torch.Tensor
    weight_shape: torch.Tensor
    weight_zero_point: torch.Tensor | None

    def __init__(self, linear: nn.Linear, scheme: QuantizationScheme, tensors: dict[str, torch.Tensor]) -> None:
        """`tensors`: the checkpoint's packed tensors of this layer, by their names in TENSORS."""
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.scheme = scheme
        for name in TENSORS:
            self.register_buffer(name, tensors.get(name))
        self.bias: nn.Parameter | None = linear.bias
        if self.bias is not None:
            self.bias.requires_grad_(False)

    def dequantized_weight(self) -> torch.Tensor:
        """This layer's float weight, built now from the packed one (compressed-tensors' decompressor)."""
        state = {name: getattr(self, name) for name in TENSORS if getattr(self, name, None) is not None}
        weight: torch.Tensor = PackedQuantizationCompressor.decompress(state, self.scheme)["weight"]
        return weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.dequantized_weight().to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        out = F.linear(x, weight, bias)
        del weight  # one layer's float weight at a time, never the model's
        return out

    def extra_repr(self) -> str:
        bits = self.scheme.weights.num_bits if self.scheme.weights else "?"
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={bits}"


def read_config(model_dir: Path) -> tuple[QuantizationConfig, QuantizationScheme]:
    """The checkpoint's quantization_config, refused unless it is the one packed scheme this module serves."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    raw = config.get("quantization_config")
    if not raw:
        raise ValueError(f"{model_dir}/config.json has no quantization_config: not a compressed-tensors checkpoint")
    qconfig = QuantizationConfig.model_validate(raw)
    if qconfig.format != PACKED_FORMAT:
        raise ValueError(f"{model_dir}: compressed-tensors format {qconfig.format!r}, expected {PACKED_FORMAT!r}")
    if len(qconfig.config_groups) != 1:
        raise ValueError(f"{model_dir}: {len(qconfig.config_groups)} quantization config groups; one is served")
    scheme = next(iter(qconfig.config_groups.values()))
    if not isinstance(scheme, QuantizationScheme):
        scheme = QuantizationScheme.model_validate(scheme)
    return qconfig, scheme


def load_int4(model_dir: Path, auto_class: Any, device: torch.device) -> nn.Module:
    """Build the architecture on the meta device, swap an Int4Linear in for every linear layer the
    checkpoint holds packed, load strictly (a missing or extra tensor is an error)."""
    from transformers import AutoConfig

    model_dir = Path(model_dir)
    _, scheme = read_config(model_dir)
    state: dict[str, torch.Tensor] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(str(path)))
    if not state:
        raise FileNotFoundError(f"{model_dir} holds no *.safetensors")
    config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=False)
    config.quantization_config = None  # built plain; the packed layers are installed here, not by transformers
    with init_empty_weights(include_buffers=False):
        model: nn.Module = auto_class.from_config(config, dtype=torch.float32)
    stored = set(state)
    packed = [key.removesuffix(".weight_packed") for key in state if key.endswith(".weight_packed")]
    for name in packed:
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear):
            raise ValueError(f"{model_dir}: {name} is packed but is a {type(module).__name__}, not a linear layer")
        tensors = {t: state.pop(f"{name}.{t}") for t in TENSORS if f"{name}.{t}" in state}
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, Int4Linear(module, scheme, tensors))
    model.load_state_dict(state, strict=False, assign=True)
    _tie_and_check(model, stored, model_dir)
    return model.to(device).eval()


def _tie_and_check(model: nn.Module, stored: set[str], model_dir: Path) -> None:
    """Tie shared weights as transformers would, then refuse tensors left unset or not used."""
    model.tie_weights()  # type: ignore[operator]
    expected = set(model.state_dict(keep_vars=True))
    extra = sorted(stored - expected)
    left = [name for name, t in model.state_dict(keep_vars=True).items() if t.is_meta]
    if extra or left:
        raise ValueError(f"{model_dir}: tensors not in the model {extra[:5]}, model tensors missing {left[:5]}")
