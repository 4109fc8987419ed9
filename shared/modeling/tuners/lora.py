"""`lora`: LoRA adapters on a frozen (possibly quantized) base, trained with peft, served without it.

The training and serving code (torch, peft) is in `lora_training`, imported when used, so registering
the method imports no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from weightflow.contracts.requirements import TaskSpec
from weightflow.shared.modeling.protocols import LoadedModel, Task, TrainResult, Tuner
from weightflow.shared.modeling.registry import tuners


class LoraSettings(BaseModel):
    r: int = Field(default=8, ge=1)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    epochs: int = Field(default=3, ge=1)
    lr: float = Field(default=5e-4, gt=0.0)
    batch_size: int = Field(default=16, ge=1)
    seed: int = 0


class Lora(Tuner):
    method: ClassVar[str] = "lora"

    def __init__(self, settings: LoraSettings | None = None) -> None:
        self.settings = settings or LoraSettings()

    def train(self, task: Task, loaded: LoadedModel, spec: TaskSpec, rows: Sequence[Any], out_dir: Path,
              seed: int = 0) -> TrainResult:
        from weightflow.shared.modeling.tuners.lora_training import train_lora

        return train_lora(task, loaded, spec, rows, out_dir, self.settings.model_copy(update={"seed": seed}))

    def attach(self, loaded: LoadedModel, adapter_dir: Path) -> LoadedModel:
        from weightflow.shared.modeling.tuners.lora_training import attach

        return attach(loaded, adapter_dir)


tuners.register(Lora.method, Lora())
