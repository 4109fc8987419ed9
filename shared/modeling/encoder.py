"""A sentence encoder (tokenizer + transformer + mean pooling) that hides fp32/int8/LoRA differences.

Every stage embeds text the same way through this class, so a score measured in benchmarking means
the same thing in fitting, tuning and monitoring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import init_empty_weights
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from shared.modeling.device import pick_device
from shared.modeling.quantization import (
    dequantize_int8,
    install_int8_modules,
    quantized_numel,
    read_manifest,
)


@dataclass(eq=False)
class Encoder:
    """One object per loaded model, so callers never need to know whether it is fp32, int8 or adapted.

    `model` is any module returning `last_hidden_state` (a transformers model, a peft wrapper or one
    with int8/LoRA modules swapped in); `device` is where inputs are sent.
    """

    model: nn.Module
    tokenizer: Any
    device: torch.device
    max_length: int = 128

    def _inputs(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {key: value.to(self.device) for key, value in batch.items()}

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised mean-pooled embeddings on the model's device, differentiable when grads are on
        (training calls this directly; `embed` is the inference path)."""
        inputs = self._inputs(texts)
        hidden = self.model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled.float(), p=2, dim=-1)

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """[n, d] float32 CPU embeddings, L2-normalised, in batches to bound activation memory."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if isinstance(texts, str):
            raise TypeError("embed expects a sequence of texts, not a single string")
        if not texts:
            return torch.empty(0, self.dimension)
        with torch.inference_mode(mode=not self.model.training):
            chunks = [self.encode(texts[i : i + batch_size]).cpu() for i in range(0, len(texts), batch_size)]
        return torch.cat(chunks)

    @property
    def config(self) -> Any:
        """The Hugging Face config of the wrapped model (peft wrappers forward it)."""
        return getattr(self.model, "config")  # noqa: B009 - nn.Module typing hides it

    @property
    def dimension(self) -> int:
        return int(self.config.hidden_size)

    def param_count(self) -> int:
        """Logical weight count: int8 weights count as parameters even though they live in buffers."""
        return sum(p.numel() for p in self.model.parameters()) + quantized_numel(self.model)

    def weight_bytes(self) -> int:
        """Bytes actually held by parameters and buffers, at their stored dtypes (int8 = 1 byte)."""
        seen: set[int] = set()
        total = 0
        for tensor in [*self.model.parameters(), *self.model.buffers()]:
            if tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
        return total


def _check_files(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    for filename in ("config.json", "model.safetensors"):
        if not (model_dir / filename).is_file():
            raise FileNotFoundError(f"{model_dir} is missing {filename}")
    if not any((model_dir / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        raise FileNotFoundError(f"{model_dir} is missing tokenizer.json (or vocab.txt)")


def load_encoder(model_dir: Path, device: torch.device | None = None, *, dequantize: bool = False) -> Encoder:
    """Load a plain or int8 model directory offline (never fetches, never runs repository code).

    A directory with quantization.json is rebuilt from its config with int8 modules in the listed
    places, then loaded strictly, so a missing or extra tensor is an error rather than a silent
    random weight. `dequantize=True` returns ordinary float modules holding the int8 values.
    """
    model_dir = Path(model_dir)
    _check_files(model_dir)
    target = device if device is not None else pick_device("auto")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=False)
    manifest = read_manifest(model_dir)
    model: nn.Module
    if manifest is None:
        model = AutoModel.from_pretrained(
            str(model_dir), local_files_only=True, use_safetensors=True, dtype=torch.float32, trust_remote_code=False
        )
    else:
        config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=False)
        # Parameters on the meta device: building the fp32 model first would cost its full fp32 size
        # (4x the int8 weights), which is exactly what the memory budget promised not to need.
        with init_empty_weights(include_buffers=False):
            model = AutoModel.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
        install_int8_modules(model, manifest.modules)
        model.load_state_dict(load_file(str(model_dir / "model.safetensors")), strict=True, assign=True)
        left = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
        if left:
            raise ValueError(f"{model_dir / 'model.safetensors'} does not hold {left[:5]}")
        if dequantize:
            dequantize_int8(model)
    model.to(target)
    model.eval()
    return Encoder(model=model, tokenizer=tokenizer, device=target)
