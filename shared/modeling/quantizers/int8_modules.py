"""The torch side of the `int8` scheme (shared.modeling.quantizers.int8): modules, save, load.

Weights are stored as int8 with one fp32 scale per output channel (per row for embeddings), so memory for
weights drops ~4x. On a CPU with an x86 quantized engine a linear layer runs as PyTorch's dynamic int8
linear (activations quantized per call, int8 x int8 matmuls in fbgemm: faster than fp32, where
dequantize-then-matmul was 0.6x its speed); elsewhere it multiplies by blocks of dequantized rows. Written here
rather than taken from torchao because torchao's int8 weight-only leaves embeddings in fp32, and for a
small encoder the embedding table is half the parameters: this halves the int8 model again (measured in
bench/RESULTS.md). The format is portable (no backend kernels) and loads strictly: a missing or extra
tensor is an error, never a silently random weight.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from accelerate import init_empty_weights
from pydantic import BaseModel, ConfigDict
from safetensors.torch import load_file, save_file
from torch import nn

from weightflow.shared.modeling.quantizers.int8 import BLOCK_ELEMENTS, DECODE_ROWS, PREFILL_BLOCK_ELEMENTS

SCHEME: Literal["int8-weight-only"] = "int8-weight-only"
FORMAT_VERSION: Literal[1] = 1
LAYOUT_FILE = "quantization.json"


class Int8Layout(BaseModel):
    """quantization.json: which modules to rebuild as int8 before loading weights (the layout of the
    quantized checkpoint; not to be confused with a registry manifest or an artifact tree's index)."""

    model_config = ConfigDict(extra="forbid")

    scheme: Literal["int8-weight-only"] = SCHEME
    format_version: Literal[1] = FORMAT_VERSION
    modules: list[str]


def _quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: scale = max|w| / 127, so each row keeps its full int8 range."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / 127.0
    # An all-zero row would divide by zero; any scale reproduces zeros exactly.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


_TINY = torch.finfo(torch.float32).tiny  # an all-zero token row stays zero, whatever it is divided by
_UNIT_STEP, _UNIT_ZERO = 1.0 / 63, 64  # [-1, 1] onto uint8 1..127: 7 bits, as fbgemm on x86 needs
CHUNK_ELEMENTS = BLOCK_ELEMENTS  # weight elements turned to float at once while decoding (int8.py says why)
PREFILL_CHUNK_ELEMENTS = PREFILL_BLOCK_ELEMENTS  # ... and in a forward over more than DECODE_ROWS rows
# Activation elements per fbgemm call on the int8 path (1 MiB in fp32): the scaled copy of the input and the kernel's
# own buffers are a chunk's size, not the whole batch's (MiniLM-L6 at 8 x 128: serving peak 110 -> 98 MiB, its
# spread 106-119 -> 96-101 over six runs; 4 % slower; the same numbers, since every row is quantized on its own)
ACTIVATION_CHUNK_ELEMENTS = 1 << 18
_PACKING = threading.Lock()  # a layer's weight is packed for fbgemm once, by whichever forward comes first


def int8_kernels() -> bool:
    """Does this torch have the x86 dynamic int8 linear (fbgemm)? ARM's qnnpack wants asymmetric weights."""
    return torch.backends.quantized.engine in ("x86", "fbgemm")


def _pack(weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> Any:
    """fbgemm's prepacked form of a per-channel symmetric int8 weight (its own copy, in its own layout)."""
    with warnings.catch_warnings():  # quantized tensors are deprecated in favour of torchao, not yet removed
        warnings.simplefilter("ignore", UserWarning)
        zeros = torch.zeros(weight_int8.shape[0], dtype=torch.long)
        qweight = torch._make_per_channel_quantized_tensor(weight_int8, scale.double(), zeros, 0)
        return torch.ops.quantized.linear_prepack(qweight, bias)


class Int8Linear(nn.Module):
    """nn.Linear with int8 weights; computes in the input's dtype after dequantizing."""

    weight_int8: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, device: torch.device | None = None
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer(
            "weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8, device=device)
        )
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.bias: nn.Parameter | None = (
            nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False) if bias else None
        )

    @classmethod
    def from_float(cls, linear: nn.Linear) -> Int8Linear:
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, linear.weight.device)
        q, scale = _quantize_rows(linear.weight)
        module.weight_int8.copy_(q)
        module.weight_scale.copy_(scale)
        if linear.bias is not None and module.bias is not None:
            module.bias.data.copy_(linear.bias.detach().float())
        return module

    _packed: Any = None  # fbgemm's copy of the weight once a CPU forward packed it; weight_int8 is then freed

    def int8_weight(self) -> torch.Tensor:
        """The int8 weight, from the buffer or (after packing) unpacked from fbgemm's copy."""
        if self._packed is None:
            return self.weight_int8
        qweight, _ = torch.ops.quantized.linear_unpack(self._packed)
        unpacked: torch.Tensor = qweight.int_repr()
        return unpacked

    def packed_bytes(self) -> int:
        """Bytes of the weight held by fbgemm (not a buffer, so `parameters()`/`buffers()` miss it)."""
        return 0 if self._packed is None else self.in_features * self.out_features

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._packed is not None:
            destination[prefix + "weight_int8"] = self.int8_weight()

    def dequantized_weight(self) -> torch.Tensor:
        return self.int8_weight().float() * self.weight_scale[:, None]

    def to_float(self) -> nn.Linear:
        linear = nn.Linear(
            self.in_features, self.out_features, self.bias is not None, device=self.weight_scale.device
        )
        linear.weight.data.copy_(self.dequantized_weight())
        if self.bias is not None and linear.bias is not None:
            linear.bias.data.copy_(self.bias.detach())
        return linear

    # fbgemm's dynamic int8 linear quantizes activations as well (here per token): measured harmless for the encoders
    # (support-tickets' int8 MiniLM scores the same 0.775) and ruinous for a causal LM (SmolLM2 int8 on orders: 0.775
    # with int8 weights only, 0.425 with dynamic activations: outlier activations). load_int8 turns it on for
    # models that are not causal LMs; everything else keeps the weight-only block path.
    dynamic_activations: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fbgemm's kernel has no autograd: with gradients on (LoRA training flows them through this layer to the
        # adapters below it) or off the CPU, the block path, on the int8 weight wherever it is held
        if (self.dynamic_activations and x.device.type == "cpu" and x.dtype == torch.float32 and int8_kernels()
                and not torch.is_grad_enabled()):
            return self._forward_int8(x)
        return self._forward_blocks(x)

    def _forward_int8(self, x: torch.Tensor) -> torch.Tensor:
        """fbgemm's int8 linear (int8 x int8 accumulated in int32, rescaled per output channel) with activations
        quantized per token: fbgemm's dynamic linear quantizes its input per tensor, so a text's scores depended
        on its batch mates and their padding (0.026 in cosine between batch 1 and 8 on MiniLM) and an evaluation
        on its batch size. Each token row is divided by its own max |x| and quantized on one fixed 7-bit grid
        over [-1, 1] (x86 needs the reduced range), its output multiplied back. The weight is packed (without
        its bias) on the first call and the int8 buffer freed, so the layer holds one int8 copy, never a float
        one."""
        if self._packed is None:
            with _PACKING:  # two threads serving their first request must not pack (and free) it twice
                if self._packed is None:
                    packed = _pack(self.weight_int8, self.weight_scale, None)
                    self.weight_int8 = torch.empty(0, dtype=torch.int8)
                    self._packed = packed
        rows = x.reshape(-1, self.in_features).to(torch.float32)
        scale = torch.linalg.vector_norm(rows, ord=float("inf"), dim=1, keepdim=True).clamp_min_(_TINY)
        step = max(1, ACTIVATION_CHUNK_ELEMENTS // max(self.in_features, self.out_features))
        if step >= rows.shape[0]:
            out: torch.Tensor = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
                rows / scale, _UNIT_STEP, _UNIT_ZERO, self._packed)
        else:
            out = torch.empty(rows.shape[0], self.out_features, dtype=torch.float32, device=rows.device)
            for i in range(0, rows.shape[0], step):
                out[i: i + step] = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
                    rows[i: i + step] / scale[i: i + step], _UNIT_STEP, _UNIT_ZERO, self._packed)
        out.mul_(scale)  # in place: a second output-sized tensor is a serving peak's worth of activations
        if self.bias is not None:
            out.add_(self.bias)
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def _forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """x @ (q * s)ᵀ computed as (x @ qᵀ) * s, a block of output columns at a time into one preallocated output:
        the scale is per output row, so it can be applied to the result, and no full-size float copy of the
        weight is ever built (for a 49k-row output layer that copy was 2 x 108 MiB at every decoding step). The
        blocks are written in place (concatenating them held every block and the joined output at once: SmolLM2
        int8's peak rose from ~420 to ~485 MiB with 1 MiB blocks)."""
        decoding = x.numel() <= DECODE_ROWS * self.in_features
        rows = max(1, (CHUNK_ELEMENTS if decoding else PREFILL_CHUNK_ELEMENTS) // max(self.in_features, 1))
        scale = self.weight_scale.to(x.dtype)
        weight = self.int8_weight().to(x.device)  # unpacked from fbgemm's copy once a CPU forward packed it
        if rows >= self.out_features:
            out = F.linear(x, weight.to(x.dtype)).mul_(scale)
        else:
            out = x.new_empty(*x.shape[:-1], self.out_features)
            for i in range(0, self.out_features, rows):
                out[..., i: i + rows] = F.linear(x, weight[i: i + rows].to(x.dtype)).mul_(scale[i: i + rows])
        return out if self.bias is None else out.add_(self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


class Int8Embedding(nn.Module):
    """nn.Embedding with int8 rows; only the looked-up rows are dequantized."""

    weight_int8: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.register_buffer(
            "weight_int8", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8, device=device)
        )
        self.register_buffer("weight_scale", torch.ones(num_embeddings, dtype=torch.float32, device=device))

    @classmethod
    def from_float(cls, embedding: nn.Embedding) -> Int8Embedding:
        if embedding.max_norm is not None:
            raise ValueError("embeddings with max_norm rewrite their weights at lookup and cannot be int8")
        module = cls(
            embedding.num_embeddings, embedding.embedding_dim, embedding.padding_idx, embedding.weight.device
        )
        q, scale = _quantize_rows(embedding.weight)
        module.weight_int8.copy_(q)
        module.weight_scale.copy_(scale)
        return module

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight_int8.float() * self.weight_scale[:, None]

    def to_float(self) -> nn.Embedding:
        embedding = nn.Embedding(
            self.num_embeddings, self.embedding_dim, self.padding_idx, device=self.weight_int8.device
        )
        embedding.weight.data.copy_(self.dequantized_weight())
        return embedding

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight_int8[ids].float() * self.weight_scale[ids].unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}"


QUANTIZED_TYPES = (Int8Linear, Int8Embedding)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def quantized_module_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, QUANTIZED_TYPES)]


def quantized_numel(model: nn.Module) -> int:
    """Weight elements held as int8 buffers, which `parameters()` does not see."""
    return sum(
        module.weight_scale.numel() * (module.in_features if isinstance(module, Int8Linear) else module.embedding_dim)
        for module in model.modules()
        if isinstance(module, QUANTIZED_TYPES)
    )


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear and nn.Embedding in place with its int8 twin; returns `model`."""
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Embedding) and n]
    for name, module in targets:
        if isinstance(module, nn.Linear):
            _replace(model, name, Int8Linear.from_float(module))
        else:
            _replace(model, name, Int8Embedding.from_float(module))
    use_int8_kernels_where_harmless(model)
    return model


def install_int8_modules(model: nn.Module, names: Sequence[str]) -> None:
    """Swap empty int8 modules in at `names` so a quantized state dict can be loaded strictly."""
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError as exc:
            raise ValueError(
                f"{LAYOUT_FILE} lists module {name!r}, which this model config does not have"
            ) from exc
        device = next(module.parameters()).device
        if isinstance(module, nn.Linear):
            _replace(
                model,
                name,
                Int8Linear(module.in_features, module.out_features, module.bias is not None, device),
            )
        elif isinstance(module, nn.Embedding):
            replacement = Int8Embedding(
                module.num_embeddings, module.embedding_dim, module.padding_idx, device
            )
            _replace(model, name, replacement)
        else:
            raise ValueError(f"{LAYOUT_FILE} lists {name!r}, a {type(module).__name__}, which has no int8 form")


def dequantize_int8(model: nn.Module) -> nn.Module:
    """Turn int8 modules back into float ones holding exactly the dequantized values (for QLoRA-style
    training, where gradients must flow through ordinary modules but the base must match int8)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, QUANTIZED_TYPES):
            _replace(model, name, module.to_float())
    return model


def read_layout(model_dir: Path) -> Int8Layout | None:
    path = Path(model_dir) / LAYOUT_FILE
    if not path.exists():
        return None
    return Int8Layout.model_validate(json.loads(path.read_text()))


def save_quantized(model: nn.Module, tokenizer: Any, dest: Path) -> Path:
    """Write a loadable quantized model directory: config, tokenizer, manifest, int8 safetensors."""
    names = quantized_module_names(model)
    if not names:
        raise ValueError("the model has no int8 modules; run quantize_int8(model) first")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(str(dest))  # type: ignore[union-attr,operator]
    tokenizer.save_pretrained(str(dest))
    # The layout goes first: a directory cut short then fails to load, instead of being taken for
    # an fp32 checkpoint whose missing tensors transformers would fill with random values.
    layout = Int8Layout(modules=names)
    (dest / LAYOUT_FILE).write_text(json.dumps(layout.model_dump(), indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in sorted(model.state_dict().items())}
    # A single metadata key: safetensors orders metadata like a hash map, so more keys would make
    # the bytes (and the artifact digest) differ between identical saves.
    save_file(state, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


def load_int8(model_dir: Path, auto_class: Any, device: torch.device, *, dequantize: bool = False) -> nn.Module:
    """Rebuild the architecture on the meta device, swap int8 modules in where the manifest says, load
    strictly. Building the fp32 model first would cost its full size: exactly what int8 promised not to."""
    layout = read_layout(model_dir)
    if layout is None:
        raise ValueError(f"{model_dir} has no {LAYOUT_FILE}")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=False)
    with init_empty_weights(include_buffers=False):
        model: nn.Module = auto_class.from_config(config, dtype=torch.float32)
    install_int8_modules(model, layout.modules)
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")), strict=True, assign=True)
    left = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise ValueError(f"{model_dir / 'model.safetensors'} does not hold {left[:5]}")
    if dequantize:
        dequantize_int8(model)
    use_int8_kernels_where_harmless(model)
    return model.to(device).eval()


def use_int8_kernels_where_harmless(model: nn.Module) -> None:
    """Int8Linear.dynamic_activations on for a model that is not a causal LM (see there why); the same rule for
    a model quantized in memory and one loaded from disk, so both compute the same numbers."""
    config = getattr(model, "config", None)
    causal = any("CausalLM" in name for name in (getattr(config, "architectures", None) or [])) or bool(
        getattr(config, "is_decoder", False))
    for module in model.modules():
        if isinstance(module, Int8Linear):
            module.dynamic_activations = not causal
