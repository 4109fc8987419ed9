"""Bring your own models: user checkpoints (path: and hf:), classifier heads, a sharded checkpoint, and
model-layer implementations registered by a test module that the services pick up unedited."""

from __future__ import annotations

import importlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from weightflow.contracts.requirements import CandidateRef, HardwareProfile, TaskSpec
from weightflow.contracts.requirements_doc import RequirementsError
from weightflow.shared.artifacts import ArtifactStore
from weightflow.shared.modeling.checkpoint import CheckpointError, inspect_checkpoint
from weightflow.shared.modeling.datasets import Example
from weightflow.shared.modeling.registry import quantizers, sources, tasks
from weightflow.shared.modeling.tuners.lora import LoraSettings
from weightflow.shared.modeling.tuners.lora_training import attach, train_lora
from weightflow.submission import prepare

from ..conftest import EXAMPLE_DIR

TEXT_CLASSIFICATION = tasks.get("text-classification")
HARDWARE = HardwareProfile(profile="t", memory_mb=100, cost_per_hour_usd=0.1)
LABELS = {"urgent": "now", "normal": "soon", "low": "whenever"}
SPEC = TaskSpec(type="text-classification", labels=LABELS, label_map={"P1": "urgent", "P2": "normal", "P3": "low"})
ROWS = [Example(id=f"eval-{i}", text=t, label=label) for i, (t, label) in enumerate(
    [("the site is down", "urgent"), ("a small glitch", "normal"), ("nice work", "low")] * 8)]


def tiny_classifier(directory: Path, *, labels: tuple[str, ...] = ("P1", "P2", "P3"), shard: bool = False) -> Path:
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from tests.plugins.scripted import VOCAB

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=len(labels),
                        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)})
    model = BertForSequenceClassification(config)
    model.save_pretrained(str(directory), safe_serialization=True, max_shard_size="20KB" if shard else "5GB")
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizerFast(vocab_file=str(directory / "vocab.txt")).save_pretrained(str(directory))
    return directory


def test_a_head_must_map_onto_the_task_labels(tmp_path: Path) -> None:
    info = inspect_checkpoint(tiny_classifier(tmp_path / "m"))
    assert TEXT_CLASSIFICATION.check_checkpoint(SPEC, info) == []
    unmapped = TEXT_CLASSIFICATION.check_checkpoint(SPEC.model_copy(update={"label_map": None}), info)
    assert any("['P1', 'P2', 'P3'] are not task labels" in e and "task.label_map" in e for e in unmapped)
    assert any("task labels ['low', 'normal', 'urgent'] have no output" in e for e in unmapped)
    partial = TEXT_CLASSIFICATION.check_checkpoint(SPEC.model_copy(update={"label_map": {"P1": "urgent"}}), info)
    assert any("['P2', 'P3'] are not task labels" in e for e in partial)
    encoder = inspect_checkpoint(sources.get("builtin").local_dir(CandidateRef(builtin="minilm-l3"), None))
    assert "no sequence-classification head" in TEXT_CLASSIFICATION.check_checkpoint(SPEC, encoder)[0]


def test_a_sharded_checkpoint_is_inspected_stored_and_loaded(tmp_path: Path) -> None:
    model_dir = tiny_classifier(tmp_path / "sharded", shard=True)
    shards = sorted(p.name for p in model_dir.glob("model-*.safetensors"))
    assert len(shards) > 1 and (model_dir / "model.safetensors.index.json").exists()
    info = inspect_checkpoint(model_dir)
    assert info.weight_files == tuple(shards) and info.params > 0
    store = ArtifactStore(tmp_path / "store")
    tree = store.put_tree(model_dir)
    loaded = TEXT_CLASSIFICATION.runtime().load(store.materialize_tree(tree), torch.device("cpu"))
    m = TEXT_CLASSIFICATION.runtime().evaluate(loaded, SPEC, ROWS, "macro_f1", HARDWARE)
    assert m.n == len(ROWS) and 0 <= m.score <= 1 and "recall/urgent" in m.extra
    assert m.sample_rows is not None and [(s.id, s.input, s.target) for s in m.sample_rows] == [
        (r.id, r.text, r.label) for r in ROWS] and all(s.prediction in LABELS for s in m.sample_rows)
    (model_dir / shards[1]).unlink()
    with pytest.raises(CheckpointError, match=r"shards named in model\.safetensors\.index\.json are missing"):
        inspect_checkpoint(model_dir)


def test_lora_trains_the_head_and_serves_what_peft_trained(tmp_path: Path) -> None:
    """modules_to_save: the adapter carries its own classifier. Trained on an int8 base (made trainable
    with the same values), served on that int8 base without peft, it computes what peft computes."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from weightflow.shared.modeling.quantizers.int8_modules import load_int8, quantize_int8, save_quantized

    fp32 = TEXT_CLASSIFICATION.runtime().load(tiny_classifier(tmp_path / "m"), torch.device("cpu"))
    quantize_int8(fp32.model)
    int8_dir = save_quantized(fp32.model, fp32.tokenizer, tmp_path / "int8")
    base = TEXT_CLASSIFICATION.runtime().load(int8_dir, torch.device("cpu"))
    report = train_lora(TEXT_CLASSIFICATION, base, SPEC, ROWS, tmp_path / "adapter",
                        LoraSettings(epochs=15, batch_size=8, lr=2e-2))
    assert report.settings["modules_to_save"] == ["classifier"] and report.loss_last < report.loss_first
    ours = attach(base, tmp_path / "adapter")
    dequantized = load_int8(int8_dir, AutoModelForSequenceClassification, torch.device("cpu"), dequantize=True)
    theirs = PeftModel.from_pretrained(dequantized, str(tmp_path / "adapter")).eval()
    batch = base.tokenizer([r.text for r in ROWS[:6]], padding=True, return_tensors="pt")
    with torch.inference_mode():
        # peft runs on the dequantized float base; ours serves on int8 kernels, which quantize activations too
        # (bench/RESULTS.md §9), so the two agree to the activations' rounding, not to float rounding
        assert torch.allclose(ours.model(**batch).logits, theirs(**batch).logits, atol=0.05)
        assert not torch.allclose(ours.model(**batch).logits, base.model(**batch).logits, atol=0.05), "the head moved"
    assert not any(type(m).__name__ == "LoraWrapped" for m in base.model.modules()), "the base is untouched"


def _hf_cache(root: Path, model_id: str, source: Path) -> Path:
    """The layout huggingface_hub writes: snapshot files are links into blobs."""
    repo = root / f"models--{model_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / "abc123"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    for file in source.iterdir():
        blob = repo / "blobs" / f"blob-{file.name}"
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    return repo


@pytest.fixture
def team(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "team"
    shutil.copytree(EXAMPLE_DIR, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    l3 = sources.get("builtin")
    from weightflow.shared.modeling.sources.builtin import materialize_candidate

    materialize_candidate("minilm-l3", folder / "models" / "my-encoder")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    _hf_cache(tmp_path / "hf", "acme/encoder", folder / "models" / "my-encoder")
    assert l3.known()
    yield folder


def test_path_and_hf_candidates_are_checked_and_stored_once(team: Path, tmp_path: Path) -> None:
    doc = yaml.safe_load((team / "requirements.yaml").read_text())
    doc["candidates"] = ["minilm-l6", {"path": "models/my-encoder"}, {"hf": "acme/encoder", "name": "acme"}]
    (team / "requirements.yaml").write_text(yaml.safe_dump(doc))
    store = ArtifactStore(tmp_path / "store")
    prepared = prepare(team / "requirements.yaml", store)
    uploaded = {c.key: c for c in prepared.event.candidates}
    assert set(uploaded) == {"my-encoder", "acme"}, "built-ins are built by the service, not uploaded"
    assert uploaded["my-encoder"].tree_digest == uploaded["acme"].tree_digest, "same bytes, one stored tree"
    assert uploaded["acme"].source == "hf" and uploaded["my-encoder"].size_class == "xs"
    files = store.tree_files(uploaded["acme"].tree_digest)
    assert "model.safetensors" in files and "config.json" in files
    doc["candidates"] = [{"hf": "acme/nothing-here"}]
    (team / "requirements.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(RequirementsError, match="not in the local Hugging Face cache"):
        prepare(team / "requirements.yaml", store)


def test_a_plugin_quantizer_is_picked_up_without_editing_a_service(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """tests.plugins.scripted registers a quantization scheme of its own; fitting uses it by name."""
    from weightflow.contracts.fitting import FitCompleted

    from .test_workflow_unit import build_workflow, of

    importlib.import_module("tests.plugins.scripted")
    assert "scripted-int8" in quantizers.names()
    flow = build_workflow(tmp_path, monkeypatch)
    flow.scores(a_eval=0.95, b_eval=0.9, a_canary=0.95, b_canary=0.95)
    events = flow.submit(flow.requirements(quantization__allowed=["int8", "scripted-int8"]))
    fit = of(events, FitCompleted)[0]
    assert fit.model.variant == "scripted-int8", "the plugin's scheme is tried first (no expected loss)"
    assert json.loads((flow.runner.store.materialize_tree(fit.model.tree_digest) / "scripted.json").read_text())
