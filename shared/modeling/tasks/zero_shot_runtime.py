"""`zero-shot-classification`'s model work: mean-pooled embeddings, label prototypes from their descriptions
(once per loaded model), and the cross-entropy over cosines that LoRA trains on."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from weightflow.contracts.requirements import TaskSpec
from weightflow.shared.modeling.loading import load_checkpoint, load_tokenizer
from weightflow.shared.modeling.protocols import LoadedModel
from weightflow.shared.modeling.tasks.classification import label_names
from weightflow.shared.modeling.tasks.classification_runtime import ClassificationRuntime, mean_pool
from weightflow.shared.modeling.tasks.zero_shot import TEMPERATURE


class ZeroShotRuntime(ClassificationRuntime):
    def load(self, model_dir: Path, device: Any) -> LoadedModel:
        return LoadedModel(load_checkpoint(model_dir, "AutoModel", device), load_tokenizer(model_dir), device,
                           self.name, Path(model_dir))

    def encode(self, loaded: LoadedModel, texts: Sequence[str]) -> torch.Tensor:
        """Normalised mean-pooled embeddings, differentiable when gradients are on (training)."""
        inputs = self.inputs(loaded, texts)
        return mean_pool(loaded.model(**inputs).last_hidden_state, inputs["attention_mask"])

    def embed(self, loaded: LoadedModel, texts: Sequence[str]) -> torch.Tensor:
        return self.encode(loaded, texts)

    def _prototypes(self, loaded: LoadedModel, spec: TaskSpec) -> torch.Tensor:
        names = label_names(spec)
        key = ("prototypes", tuple((n, (spec.labels or {})[n]) for n in names))
        if key not in loaded.cache:  # label descriptions are embedded once per loaded model
            loaded.cache[key] = self.encode(loaded, [(spec.labels or {})[n] for n in names])
        prototypes: torch.Tensor = loaded.cache[key]
        return prototypes

    def label_scores(self, loaded: LoadedModel, spec: TaskSpec, texts: Sequence[str]) -> torch.Tensor:
        return self.encode(loaded, texts) @ self._prototypes(loaded, spec).T

    def training_loss(self, loaded: LoadedModel, spec: TaskSpec, rows: Sequence[Any]) -> torch.Tensor:
        """Cross-entropy over text-to-description cosines: the routing rule made differentiable; the
        descriptions go through the adapter too, so both sides may move."""
        names = label_names(spec)
        texts = self.encode(loaded, [r.text for r in rows])
        descriptions = self.encode(loaded, [(spec.labels or {})[n] for n in names])
        targets = torch.tensor([names.index(r.label) for r in rows], device=texts.device)
        return F.cross_entropy(texts @ descriptions.T / TEMPERATURE, targets)
