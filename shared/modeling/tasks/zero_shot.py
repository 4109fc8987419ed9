"""`zero-shot-classification`: any encoder checkpoint, mean pooling, the label whose description is nearest.

The team describes each label in words; a text gets the label whose description embedding is most
cosine-similar to its own. No head is trained, so any encoder works; LoRA tuning moves both sides.
"""

from __future__ import annotations

from typing import ClassVar

from weightflow.contracts.requirements import TaskSpec
from weightflow.shared.modeling.checkpoint import CheckpointInfo
from weightflow.shared.modeling.protocols import TaskRuntime
from weightflow.shared.modeling.registry import tasks
from weightflow.shared.modeling.tasks.classification import ClassificationTask

TEMPERATURE = 0.05


class ZeroShotClassification(ClassificationTask):
    name: ClassVar[str] = "zero-shot-classification"
    score_temperature: ClassVar[float] = TEMPERATURE  # the temperature its LoRA objective trains at
    # any embeddings API answers the zero-shot rule; a weightflow endpoint also classifies itself
    remote_routes: ClassVar[tuple[str, ...]] = ("embeddings", "classify", "chat")
    runtime_class: ClassVar[type[TaskRuntime] | str] = ".zero_shot_runtime:ZeroShotRuntime"

    def check_checkpoint(self, spec: TaskSpec, info: CheckpointInfo) -> list[str]:
        if info.is_decoder:
            return [f"{info.directory.name}: {info.architectures} is a decoder; zero-shot classification embeds "
                    "text with an encoder"]
        return []


tasks.register(ZeroShotClassification.name, ZeroShotClassification())
