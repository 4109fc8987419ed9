"""`text-classification`: a checkpoint with its own sequence-classification head.

The head's labels (`id2label`) must map onto the task's labels, by name or through `task.label_map`
(checkpoint label -> task label); a mismatch is listed before anything runs. LoRA tunes the encoder's
attention and trains the head itself (`modules_to_save`).
"""

from __future__ import annotations

from typing import ClassVar

from weightflow.contracts.requirements import TaskSpec
from weightflow.shared.modeling.checkpoint import CheckpointInfo
from weightflow.shared.modeling.protocols import TaskRuntime
from weightflow.shared.modeling.registry import tasks
from weightflow.shared.modeling.tasks.classification import ClassificationTask, label_names

HEAD_NAMES = ("classifier", "score", "classification_head")


def head_columns(id2label: dict[int, str], spec: TaskSpec) -> tuple[list[int], list[str]]:
    """For each task label (in order) the checkpoint's logit column; and every mismatch, as messages."""
    mapping = spec.label_map or {}
    to_task = {i: mapping.get(name, name) for i, name in id2label.items()}
    problems: list[str] = []
    unmapped = sorted(name for i, name in id2label.items() if to_task[i] not in (spec.labels or {}))
    missing = sorted(set(spec.labels or {}) - set(to_task.values()))
    if unmapped:
        problems.append(f"the checkpoint's labels {unmapped} are not task labels; map them with task.label_map "
                        "(checkpoint label: task label)")
    if missing:
        problems.append(f"task labels {missing} have no output in the checkpoint's head "
                        f"(its labels: {[id2label[i] for i in sorted(id2label)]})")
    twice = sorted({t for t in to_task.values() if list(to_task.values()).count(t) > 1})
    if twice:
        problems.append(f"several checkpoint labels map to {twice}; each task label needs exactly one")
    if problems:
        return [], problems
    inverse = {t: i for i, t in to_task.items()}
    return [inverse[name] for name in label_names(spec)], []


class TextClassification(ClassificationTask):
    name: ClassVar[str] = "text-classification"
    # a head's labels come from a classify route; a chat model can be asked for them instead
    remote_routes: ClassVar[tuple[str, ...]] = ("classify", "chat")
    runtime_class: ClassVar[type[TaskRuntime] | str] = ".text_classification_runtime:TextClassificationRuntime"

    def check_checkpoint(self, spec: TaskSpec, info: CheckpointInfo) -> list[str]:
        where = info.directory.name
        if not info.has_sequence_classification_head:
            return [f"{where}: {info.architectures or 'its config'} has no sequence-classification head; "
                    "use task type zero-shot-classification for a plain encoder"]
        if not info.id2label:
            return [f"{where}: config.json has no id2label"]
        return [f"{where}: {p}" for p in head_columns(info.id2label, spec)[1]]


tasks.register(TextClassification.name, TextClassification())
