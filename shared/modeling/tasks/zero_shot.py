"""`zero-shot-classification`: any encoder checkpoint, mean pooling, the label whose description is nearest.

The team describes each label in words; a text gets the label whose description embedding is most
cosine-similar to its own. No head is trained, so any encoder works; LoRA tuning moves both sides.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from weightflow.contracts.requirements import TaskSpec
from weightflow.shared.modeling.checkpoint import CheckpointInfo
from weightflow.shared.modeling.protocols import LoadedModel
from weightflow.shared.modeling.registry import tasks
from weightflow.shared.modeling.tasks.classification import ClassificationTask, label_names, mean_pool

if TYPE_CHECKING:
    import torch

TEMPERATURE = 0.05


class ZeroShotClassification(ClassificationTask):
    name: ClassVar[str] = "zero-shot-classification"
    score_temperature: ClassVar[float] = TEMPERATURE  # the temperature its LoRA objective trains at
    # any embeddings API answers the zero-shot rule; a weightflow endpoint also classifies itself
    remote_routes: ClassVar[tuple[str, ...]] = ("embeddings", "classify", "chat")

    def check_checkpoint(self, spec: TaskSpec, info: CheckpointInfo) -> list[str]:
        if info.is_decoder:
            return [f"{info.directory.name}: {info.architectures} is a decoder; zero-shot classification embeds "
                    "text with an encoder"]
        return []

    def load(self, model_dir: Path, device: Any) -> LoadedModel:
        from weightflow.shared.modeling.loading import load_checkpoint, load_tokenizer

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
        import torch
        import torch.nn.functional as F

        names = label_names(spec)
        texts = self.encode(loaded, [r.text for r in rows])
        descriptions = self.encode(loaded, [(spec.labels or {})[n] for n in names])
        targets = torch.tensor([names.index(r.label) for r in rows], device=texts.device)
        return F.cross_entropy(texts @ descriptions.T / TEMPERATURE, targets)


tasks.register(ZeroShotClassification.name, ZeroShotClassification())
