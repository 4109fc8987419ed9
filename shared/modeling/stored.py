"""The model layer over the artifact store: verified rows and models by digest, deployments by manifest.

Every file is checksum-verified before it is read or loaded; a tampered file raises IntegrityError.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from weightflow.contracts.fitting import MemoryBudget
from weightflow.contracts.measurement import Measurement
from weightflow.contracts.registry import Manifest
from weightflow.contracts.requirements import Requirements, TaskSpec
from weightflow.shared import sample_logs
from weightflow.shared.artifacts import ArtifactStore
from weightflow.shared.modeling.budget import MB, SERVING_BATCH, Architecture, calibrated_budget
from weightflow.shared.modeling.checkpoint import tree_config
from weightflow.shared.modeling.datasets import load_jsonl
from weightflow.shared.modeling.device import pick_device
from weightflow.shared.modeling.protocols import LoadedModel, Quantizer, Task
from weightflow.shared.modeling.registry import quantizers, sources, tasks, tuners


def task_of(spec: TaskSpec) -> Task:
    return tasks.get(spec.type)


def rows(store: ArtifactStore, digest: str, task: Task, split: str) -> list[Any]:
    """A data split's rows, typed by the task (the general split has its own row type)."""
    model = task.general_row if split == "general" else task.row
    return load_jsonl(store.open_verified(digest), model, label=f"data.{split}")


def load_tree(store: ArtifactStore, tree_digest: str, task: Task, device: str = "auto") -> LoadedModel:
    return task.runtime().load(store.materialize_tree(tree_digest), pick_device(device))


def with_adapter(store: ArtifactStore, loaded: LoadedModel, adapter_tree: str, method: str = "lora") -> LoadedModel:
    return tuners.get(method).attach(loaded, store.materialize_tree(adapter_tree))


def measure(store: ArtifactStore, source: str, tree_digest: str, req: Requirements, rows: Sequence[Any], *,
            confidence: float, adapter_tree: str | None = None, adapter_method: str = "lora",
            device: str = "auto") -> Measurement:
    """A model measured on `rows` the way its source runs it: a stored checkpoint loaded here (with its
    adapter), or an API candidate's endpoint called over HTTP (EndpointError when it gives no answer); its sample
    log stored. `confidence`: of the score's interval (quality.confidence on the eval set, monitoring.confidence
    on the canary set)."""
    task = task_of(req.task)
    origin = sources.get(source)
    if origin.remote:
        m = task.evaluate_remote(origin.endpoint(store, tree_digest), req.task, rows, req.quality.metric,
                                 req.deployment.hardware, confidence)
        return sample_logs.keep(store, m)
    loaded = load_tree(store, tree_digest, task, device)
    if adapter_tree is not None:
        loaded = with_adapter(store, loaded, adapter_tree, adapter_method)
    measured = task.runtime().evaluate(loaded, req.task, rows, req.quality.metric, req.deployment.hardware, confidence)
    return sample_logs.keep(store, measured)


def is_remote(source: str) -> bool:
    return sources.get(source).remote


def read_manifest(store: ArtifactStore, manifest_id: str) -> Manifest:
    return Manifest.model_validate(store.read_json(manifest_id))


def load_deployment(store: ArtifactStore, manifest: Manifest, device: str = "auto") -> LoadedModel:
    """The deployment exactly as its manifest pins it: every pinned file verified first."""
    for digest in manifest.checksums().values():
        store.verify(digest)
    if is_remote(manifest.source):
        raise ValueError(f"{manifest.deployment} is a hosted API ({manifest.candidate}): there is no model to load "
                         "here; call its endpoint (see the runbook: `weightflow registry runbook "
                         f"{manifest.deployment}`)")
    task = task_of(manifest.requirements.task)
    loaded = load_tree(store, manifest.model.tree_digest, task, device)
    if manifest.adapter is not None:
        loaded = with_adapter(store, loaded, manifest.adapter.tree_digest)
    return loaded


def architecture(store: ArtifactStore, tree_digest: str) -> Architecture:
    """The shape the memory budget needs, from a stored checkpoint's config.json (no weights read)."""
    return Architecture.from_config(tree_config(store.tree_files(tree_digest), store.read_json))


def budget_for(store: ArtifactStore, tree_digest: str, params: int, variant: str, req: Requirements, *,
               quantizer: Quantizer | None = None, weight_bytes: int | None = None) -> MemoryBudget:
    """The memory budget of a stored checkpoint's variant on the requirements' hardware, at the serving
    context its task plans for, plus the hardware's runtime term (one rule for fitting, and for
    selection's "would it fit?"). Before a variant exists its weights are the quantizer's prediction."""
    files = store.tree_files(tree_digest)
    arch = Architecture.from_config(tree_config(files, store.read_json))
    hw = req.deployment.hardware
    if quantizer is None and variant in quantizers.names():
        quantizer = quantizers.get(variant)
    if weight_bytes is None and quantizer is not None:
        weight_bytes = quantizer.predict_weight_bytes(params, arch)
    seq = task_of(req.task).serving_context(req.task)
    sizes = {name: store.size_of(d) for name, d in files.items()
             if name.startswith(("tokenizer.json", "vocab", "merges")) or name.endswith(".model")}
    return calibrated_budget(variant, params, arch, int(hw.memory_mb * MB), device=hw.device, file_sizes=sizes,
                             seq=seq, weight_bytes=weight_bytes,
                             working_bytes=quantizer.working_bytes(arch, SERVING_BATCH, seq) if quantizer else 0,
                             runtime_override=None if hw.runtime_mb is None else int(hw.runtime_mb * MB))
