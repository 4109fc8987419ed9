"""Load a stored checkpoint for a task: offline, safetensors only, never the checkpoint's own code.

A quantizer whose format transformers does not know (weightflow's int8) loads its own directories;
A quantizer whose checkpoints must not load the way transformers would (weightflow's int8; compressed-tensors,
which transformers decompresses to float at load) loads its own directories; everything else goes through
transformers.
A tree that holds a placement (fitting's offload, shared.modeling.placement) loads under its device map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers import AutoTokenizer

from weightflow.shared.modeling import placement
from weightflow.shared.modeling.registry import quantizers

# LoRA targets by the names architectures give their attention projections (query/value first: the
# LoRA paper's choice, and enough for classification heads and small LMs alike).
_PROJECTIONS = (("query", "value"), ("q_proj", "v_proj"), ("q_lin", "v_lin"), ("c_attn",), ("qkv_proj",))


def load_tokenizer(model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=False)


def load_checkpoint(model_dir: Path, auto_class: str, device: torch.device) -> nn.Module:
    """`auto_class` names a transformers class (AutoModel, AutoModelForSequenceClassification, …)."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is missing config.json")
    cls = getattr(transformers, auto_class)
    placed = placement.read(model_dir)
    if placed is not None:  # offloaded: accelerate's hooks move each module, so no `.to()` that would undo the map
        offloaded: nn.Module = placement.load(model_dir, cls, device, placed)
        offloaded.eval()
        return offloaded
    for name in quantizers.names():
        quantizer = quantizers.get(name)
        if quantizer.detects(model_dir):
            model: nn.Module = quantizer.load(model_dir, cls, device)
            break
    else:
        if not any(model_dir.glob("*.safetensors")):
            raise FileNotFoundError(f"{model_dir} is missing model.safetensors")
        model = cls.from_pretrained(str(model_dir), local_files_only=True, use_safetensors=True,
                                    dtype=torch.float32, trust_remote_code=False)
    model.to(device)
    model.eval()
    return model


def attention_projections(model: nn.Module) -> list[str]:
    leaves = {name.rpartition(".")[2] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    for names in _PROJECTIONS:
        if set(names) <= leaves:
            return list(names)
    raise ValueError(f"no attention projections found to put LoRA on (linear layers: {sorted(leaves)[:12]})")


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by parameters and buffers at their stored dtypes (int8 = 1 byte), each tensor once, and by
    int8 weights packed for their kernels."""
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    # int8 linear layers packed for fbgemm hold their weight outside any buffer
    for module in model.modules():
        packed = getattr(module, "packed_bytes", None)
        total += int(packed()) if callable(packed) else 0
    return total
