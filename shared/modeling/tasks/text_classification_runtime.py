"""`text-classification`'s model work: the checkpoint's own head, its logit columns in task-label order, and
LoRA on the encoder's attention with the head trained whole (`modules_to_save`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from weightflow.contracts.requirements import TaskSpec
from weightflow.shared.modeling.loading import attention_projections, load_checkpoint, load_tokenizer
from weightflow.shared.modeling.protocols import LoadedModel
from weightflow.shared.modeling.tasks.classification import label_names
from weightflow.shared.modeling.tasks.classification_runtime import ClassificationRuntime, mean_pool
from weightflow.shared.modeling.tasks.text_classification import HEAD_NAMES, head_columns


class TextClassificationRuntime(ClassificationRuntime):
    def load(self, model_dir: Path, device: Any) -> LoadedModel:
        model = load_checkpoint(model_dir, "AutoModelForSequenceClassification", device)
        return LoadedModel(model, load_tokenizer(model_dir), device, self.name, Path(model_dir))

    def _columns(self, loaded: LoadedModel, spec: TaskSpec) -> list[int]:
        id2label = {int(k): str(v) for k, v in loaded.model.config.id2label.items()}
        columns, problems = head_columns(id2label, spec)
        if problems:
            raise ValueError("; ".join(problems))
        return columns

    def logits(self, loaded: LoadedModel, spec: TaskSpec, texts: Sequence[str]) -> torch.Tensor:
        columns = self._columns(loaded, spec)
        out: torch.Tensor = loaded.model(**self.inputs(loaded, texts)).logits
        return out[:, columns]

    def label_scores(self, loaded: LoadedModel, spec: TaskSpec, texts: Sequence[str]) -> torch.Tensor:
        return self.logits(loaded, spec, texts)

    def embed(self, loaded: LoadedModel, texts: Sequence[str]) -> torch.Tensor:
        inputs = self.inputs(loaded, texts)
        hidden = loaded.model(**inputs, output_hidden_states=True).hidden_states[-1]
        return mean_pool(hidden, inputs["attention_mask"])

    def training_loss(self, loaded: LoadedModel, spec: TaskSpec, rows: Sequence[Any]) -> torch.Tensor:
        names = label_names(spec)
        logits = self.logits(loaded, spec, [r.text for r in rows])
        targets = torch.tensor([names.index(r.label) for r in rows], device=logits.device)
        return F.cross_entropy(logits, targets)

    def lora_targets(self, loaded: LoadedModel) -> tuple[list[str], list[str]]:
        heads = [n for n in HEAD_NAMES if isinstance(getattr(loaded.model, n, None), nn.Module)]
        return attention_projections(loaded.model), heads[:1]
