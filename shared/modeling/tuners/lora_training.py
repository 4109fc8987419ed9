"""The torch side of the `lora` tuner (shared.modeling.tuners.lora): training with peft, serving without.

Training uses peft on the base made trainable by its quantizer (QLoRA-style: the adapter learns to
correct exactly the weights it will run on), with the task's own loss. Serving does not need peft:
`attach` reads the saved safetensors and wraps the target modules itself, so it works on int8 modules
peft does not know about; a trained head (`modules_to_save`) replaces the base's.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from torch import nn

from weightflow.contracts.requirements import TaskSpec
from weightflow.contracts.tuning import LOSS_CURVE_POINTS
from weightflow.shared.modeling.protocols import LoadedModel, Task, TrainResult
from weightflow.shared.modeling.registry import quantizers
from weightflow.shared.modeling.tuners.lora import LoraSettings

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."


def _trainable_base(model: nn.Module) -> nn.Module:
    for name in quantizers.names():
        model = quantizers.get(name).make_trainable(model)
    return model


def train_lora(task: Task, loaded: LoadedModel, spec: TaskSpec, rows: Sequence[Any], out_dir: Path,
               settings: LoraSettings | None = None) -> TrainResult:
    """Train a LoRA adapter on `loaded` (not modified: a copy trains) with the task's loss; save it.

    loss_first is the first step's loss (the untuned model on one batch); loss_last is the mean over the
    last epoch, which is less noisy than a single final batch.
    """
    settings = settings or LoraSettings()
    if not rows:
        raise ValueError("LoRA training needs at least one train row")
    start = time.perf_counter()
    base = _trainable_base(copy.deepcopy(loaded.model))
    targets, heads = task.runtime().lora_targets(LoadedModel(base, loaded.tokenizer, loaded.device, loaded.task,
                                                   loaded.model_dir))
    forked: list[int] = []
    device = loaded.device
    if getattr(device, "type", "cpu") == "cuda":  # fork the CUDA generator too, so callers' RNG is untouched
        forked.append(device.index if device.index is not None else torch.cuda.current_device())
    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(settings.seed)
        peft_model = get_peft_model(base, LoraConfig(r=settings.r, lora_alpha=settings.alpha,
                                                     lora_dropout=settings.dropout, target_modules=targets,
                                                     modules_to_save=heads or None, bias="none"))
        trainable = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
        if not trainable or any("lora_" not in n and "modules_to_save" not in n for n, _ in trainable):
            names = [n for n, _ in trainable][:5]
            raise RuntimeError(f"only the adapter (and a saved head) may train; trainable: {names}")
        student = LoadedModel(peft_model, loaded.tokenizer, device, loaded.task, loaded.model_dir)
        optimizer = torch.optim.AdamW([p for _, p in trainable], lr=settings.lr)
        generator = torch.Generator().manual_seed(settings.seed)
        peft_model.train()
        losses: list[list[float]] = []
        for _ in range(settings.epochs):
            epoch_losses = []
            order = torch.randperm(len(rows), generator=generator).tolist()
            for i in range(0, len(order), settings.batch_size):
                loss = task.runtime().training_loss(student, spec, [rows[j] for j in order[i: i + settings.batch_size]])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                epoch_losses.append(float(loss.detach()))
            losses.append(epoch_losses)
        peft_model.eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out_dir), safe_serialization=True)
    _portable_config(out_dir)
    recorded: dict[str, float | int | str | list[str]] = {
        **settings.model_dump(), "target_modules": targets, "modules_to_save": heads}
    return TrainResult(steps=sum(len(e) for e in losses), epochs=settings.epochs,
                       seconds=time.perf_counter() - start, loss_first=losses[0][0],
                       loss_last=sum(losses[-1]) / len(losses[-1]),
                       loss_curve=loss_curve([loss for epoch in losses for loss in epoch]),
                       trainable_params=sum(p.numel() for _, p in trainable),
                       total_params=sum(p.numel() for p in peft_model.parameters()), settings=recorded)


def loss_curve(losses: list[float], points: int = LOSS_CURVE_POINTS) -> list[tuple[int, float]]:
    """(step, loss) for every step, or, past `points` steps, the mean of each run of steps at its last step:
    the curve a reviewer looks at, at a size an event can carry."""
    size = max(1, -(-len(losses) // points))  # ceil
    return [(min(i + size, len(losses)), sum(losses[i: i + size]) / len(losses[i: i + size]))
            for i in range(0, len(losses), size)]


# adapter_config.json fields peft keeps as sets: written in the process's string-hash order, so two identical
# trainings pinned different bytes (['value', 'query'] in one home, ['query', 'value'] in the next)
_SET_FIELDS = ("target_modules", "exclude_modules")


def _portable_config(adapter_dir: Path) -> None:
    """adapter_config.json as bytes that depend on the training alone. peft records where the base was loaded
    from: a folder of this host's artifact store; the manifest pins the base by digest, and a pinned file must
    not name a host path (a release moves between hosts unchanged). Its sets are written sorted."""
    path = adapter_dir / ADAPTER_CONFIG
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = None
    for field in _SET_FIELDS:
        if isinstance(config.get(field), list):
            config[field] = sorted(config[field])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


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
        "lora_bias": bool(config.get("lora_bias")),
        "target_parameters": bool(config.get("target_parameters")),
        "trainable_token_indices": bool(config.get("trainable_token_indices")),
        "layer_replication": bool(config.get("layer_replication")),
    }
    used = [key for key, on in unsupported.items() if on]
    if used:
        raise ValueError(f"adapter options not supported by attach: {used}")
    return config


def _read_adapter(adapter_dir: Path, heads: list[str]) -> tuple[dict[str, dict[str, torch.Tensor]],
                                                               dict[str, dict[str, torch.Tensor]]]:
    """(module -> {"A", "B"}) LoRA pairs, and (head module -> its saved state) for `modules_to_save`."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    saved: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(adapter_dir / ADAPTER_WEIGHTS)).items():
        name = key.removeprefix(_PEFT_PREFIX)
        module_name, sep, part = name.rpartition(".lora_")
        if sep and part in ("A.weight", "B.weight"):
            pairs.setdefault(module_name, {})[part[0]] = tensor
            continue
        head = next((h for h in heads if name == h or name.startswith(f"{h}.") or f".{h}." in f".{name}"), None)
        if head is None:
            raise ValueError(f"unexpected tensor {key!r} in {ADAPTER_WEIGHTS}")
        prefix = name[: name.index(head) + len(head)]
        saved.setdefault(prefix, {})[name[len(prefix) + 1:]] = tensor
    if not pairs:
        raise ValueError(f"{adapter_dir / ADAPTER_WEIGHTS} holds no LoRA tensors")
    return pairs, saved


def attach(loaded: LoadedModel, adapter_dir: Path) -> LoadedModel:
    """A new LoadedModel whose target modules carry the adapter (and whose head is the trained one);
    the given model is left untouched."""
    adapter_dir = Path(adapter_dir)
    config = _adapter_config(adapter_dir)
    r = int(config["r"])
    alpha = float(config["lora_alpha"])
    scaling = alpha / (r**0.5) if config.get("use_rslora") else alpha / r
    targets = config.get("target_modules")
    pairs, saved = _read_adapter(adapter_dir, list(config.get("modules_to_save") or []))
    model = copy.deepcopy(loaded.model)
    for module_name, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise ValueError(f"adapter module {module_name!r} lacks lora_A or lora_B")
        if isinstance(targets, list) and module_name.rpartition(".")[2] not in targets:
            raise ValueError(f"adapter module {module_name!r} is not among target_modules {targets}")
        base = _submodule(model, module_name)
        a = ab["A"].to(loaded.device, torch.float32)
        b = ab["B"].to(loaded.device, torch.float32)
        if a.shape[0] != r or b.shape[1] != r:
            raise ValueError(f"adapter module {module_name!r} has A/B shapes {tuple(a.shape)}/{tuple(b.shape)}, "
                             f"not rank {r}")
        _replace(model, module_name, LoraWrapped(base, a, b, scaling))
    for module_name, state in saved.items():
        holder = nn.Module()
        holder.head = copy.deepcopy(_submodule(model, module_name))
        head = _trainable_base(holder).get_submodule("head")  # a quantized head becomes float, as it was trained
        head.load_state_dict({k: v.to(loaded.device) for k, v in state.items()}, strict=True)
        _replace(model, module_name, head)
    model.eval()
    return LoadedModel(model, loaded.tokenizer, loaded.device, loaded.task, loaded.model_dir)


def _submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        raise ValueError(f"the adapter targets {name!r}, which this model does not have") from exc


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


