"""LoRA tuning on a frozen (possibly int8) base, and a dependency-free way to serve the adapter.

Training uses peft on the dequantized base (QLoRA-style: the adapter learns to correct exactly the
weights it will run on). Serving does not need peft: `attach_adapter` reads the saved safetensors
and wraps the target modules itself, so it works on int8 modules peft does not know about.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from pydantic import BaseModel, Field
from safetensors.torch import load_file
from torch import nn

from shared.modeling.datasets import Example
from shared.modeling.encoder import Encoder, load_encoder

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."


class LoraSettings(BaseModel):
    r: int = Field(default=8, ge=1)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["query", "value"])
    epochs: int = Field(default=3, ge=1)
    lr: float = Field(default=5e-4, gt=0.0)
    batch_size: int = Field(default=16, ge=1)
    temperature: float = Field(default=0.05, gt=0.0)
    seed: int = 0


class TrainReport(BaseModel):
    steps: int
    epochs: int
    seconds: float
    loss_first: float
    loss_last: float
    trainable_params: int
    total_params: int


def _contrastive_loss(
    student: Encoder, texts: list[str], descriptions: list[str], targets: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Cross-entropy over text-to-description cosines: the same decision rule as zero-shot routing,
    made differentiable; descriptions go through the adapter too, so both sides may move."""
    logits = student.encode(texts) @ student.encode(descriptions).T / temperature
    return F.cross_entropy(logits, targets)


def train_lora(
    model_dir: Path,
    examples: Sequence[Example],
    labels: Mapping[str, str],
    out_dir: Path,
    settings: LoraSettings | None = None,
    device: torch.device | None = None,
) -> TrainReport:
    """Train a LoRA adapter for zero-shot routing and save it as adapter safetensors + config.

    loss_first is the first step's loss (the untuned model on one batch); loss_last is the mean
    over the last epoch, which is less noisy than a single final batch.
    """
    settings = settings or LoraSettings()
    if not examples:
        raise ValueError("train_lora needs at least one example")
    names = list(labels)
    unknown = sorted({ex.label for ex in examples} - set(names))
    if unknown:
        raise ValueError(f"training examples use labels that have no description: {unknown}")

    start = time.perf_counter()
    encoder = load_encoder(model_dir, device, dequantize=True)
    forked: list[int] = []
    if encoder.device.type == "cuda":  # fork the CUDA generator too, so callers' RNG streams are untouched
        index = encoder.device.index
        forked.append(index if index is not None else torch.cuda.current_device())
    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(settings.seed)
        peft_model = get_peft_model(
            encoder.model,
            LoraConfig(
                r=settings.r,
                lora_alpha=settings.alpha,
                lora_dropout=settings.dropout,
                target_modules=list(settings.target_modules),
                bias="none",
            ),
        )
        trainable = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
        if not trainable or any("lora_" not in n for n, _ in trainable):
            raise RuntimeError(f"only LoRA weights may train; trainable: {[n for n, _ in trainable][:5]}")
        student = Encoder(peft_model, encoder.tokenizer, encoder.device, encoder.max_length)
        texts = [ex.text for ex in examples]
        descriptions = [labels[name] for name in names]
        targets = torch.tensor([names.index(ex.label) for ex in examples], device=encoder.device)
        optimizer = torch.optim.AdamW([p for _, p in trainable], lr=settings.lr)
        generator = torch.Generator().manual_seed(settings.seed)

        peft_model.train()
        losses: list[list[float]] = []
        for _ in range(settings.epochs):
            epoch_losses = []
            order = torch.randperm(len(texts), generator=generator).tolist()
            for i in range(0, len(order), settings.batch_size):
                batch = order[i : i + settings.batch_size]
                loss = _contrastive_loss(
                    student, [texts[j] for j in batch], descriptions, targets[batch], settings.temperature
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                epoch_losses.append(float(loss.detach()))
            losses.append(epoch_losses)
        peft_model.eval()

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out_dir), safe_serialization=True)
    return TrainReport(
        steps=sum(len(epoch) for epoch in losses),
        epochs=settings.epochs,
        seconds=time.perf_counter() - start,
        loss_first=losses[0][0],
        loss_last=sum(losses[-1]) / len(losses[-1]),
        trainable_params=sum(p.numel() for _, p in trainable),
        total_params=student.param_count(),
    )


class LoraWrapped(nn.Module):
    """base(x) + (x Aᵀ Bᵀ)·scaling around any module mapping [.., in] -> [.., out], int8 included."""

    def __init__(self, base: nn.Module, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> None:
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(lora_a, requires_grad=False)
        self.lora_B = nn.Parameter(lora_b, requires_grad=False)
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base: torch.Tensor = self.base(x)
        update = (x @ self.lora_A.to(x.dtype).T) @ self.lora_B.to(x.dtype).T
        return base + update * self.scaling


def _adapter_config(adapter_dir: Path) -> dict[str, Any]:
    for filename in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (adapter_dir / filename).is_file():
            raise FileNotFoundError(f"{adapter_dir} is missing {filename}")
    config: dict[str, Any] = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{adapter_dir} holds a {config['peft_type']} adapter, not LoRA")
    unsupported = {
        "use_dora": bool(config.get("use_dora")),
        "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
        "bias": config.get("bias", "none") != "none",
        "rank_pattern": bool(config.get("rank_pattern")),
        "alpha_pattern": bool(config.get("alpha_pattern")),
        "modules_to_save": bool(config.get("modules_to_save")),
        "lora_bias": bool(config.get("lora_bias")),
        "target_parameters": bool(config.get("target_parameters")),
        "trainable_token_indices": bool(config.get("trainable_token_indices")),
        "layer_replication": bool(config.get("layer_replication")),
    }
    used = [key for key, on in unsupported.items() if on]
    if used:
        raise ValueError(f"adapter options not supported by attach_adapter: {used}")
    return config


def attach_adapter(encoder: Encoder, adapter_dir: Path) -> Encoder:
    """A new Encoder whose target modules carry the adapter; the given encoder is left untouched."""
    adapter_dir = Path(adapter_dir)
    config = _adapter_config(adapter_dir)
    r = int(config["r"])
    alpha = float(config["lora_alpha"])
    scaling = alpha / (r**0.5) if config.get("use_rslora") else alpha / r
    targets = config.get("target_modules")

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(adapter_dir / ADAPTER_WEIGHTS)).items():
        module_name, sep, part = key.removeprefix(_PEFT_PREFIX).rpartition(".lora_")
        if not sep or part not in ("A.weight", "B.weight"):
            raise ValueError(f"unexpected tensor {key!r} in {ADAPTER_WEIGHTS}")
        pairs.setdefault(module_name, {})[part[0]] = tensor
    if not pairs:
        raise ValueError(f"{adapter_dir / ADAPTER_WEIGHTS} holds no LoRA tensors")

    model = copy.deepcopy(encoder.model)
    for module_name, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise ValueError(f"adapter module {module_name!r} lacks lora_A or lora_B")
        if isinstance(targets, list) and module_name.rpartition(".")[2] not in targets:
            raise ValueError(f"adapter module {module_name!r} is not among target_modules {targets}")
        try:
            base = model.get_submodule(module_name)
        except AttributeError as exc:
            raise ValueError(f"adapter targets {module_name!r}, which this model does not have") from exc
        a = ab["A"].to(encoder.device, torch.float32)
        b = ab["B"].to(encoder.device, torch.float32)
        if a.shape[0] != r or b.shape[1] != r:
            shapes = f"{tuple(a.shape)}/{tuple(b.shape)}"
            raise ValueError(f"adapter module {module_name!r} has A/B shapes {shapes}, not rank {r}")
        parent_name, _, child = module_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoraWrapped(base, a, b, scaling))
    model.eval()
    return Encoder(model, encoder.tokenizer, encoder.device, encoder.max_length)
