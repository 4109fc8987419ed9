"""A scripted task, registered as a plugin: the whole workflow on tiny real checkpoints in seconds.

The checkpoints are real (a tiny BERT made by `make_checkpoint`, loaded, quantized and LoRA-tuned by
the real model layer), but the *scores* come from a JSON script the test writes and may rewrite while
the workflow runs (to make a canary drift). Keys are `name/variant/adapter/split` (adapter 0 or 1,
split eval or canary, variant fp32 or int8), with `*` as a wildcard in any position, e.g.
`{"a/*/*/eval": 0.9, "a/*/*/canary": 0.4}`. The script's path is WEIGHTFLOW_TEST_SCRIPT.

Services load it with WEIGHTFLOW_PLUGINS=tests.plugins.scripted: no service code knows it exists.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from weightflow.contracts.measurement import Measurement
from weightflow.contracts.requirements import HardwareProfile, TaskSpec
from weightflow.shared.modeling import placement
from weightflow.shared.modeling.peak import PeakMeasured
from weightflow.shared.modeling.placement import PLACEMENT_FILE
from weightflow.shared.modeling.protocols import LoadedModel, Quantizer, Task
from weightflow.shared.modeling.registry import quantizers, tasks
from weightflow.shared.modeling.tasks.base import measurement
from weightflow.shared.modeling.tasks.classification import label_names, labelled_samples
from weightflow.shared.modeling.tasks.zero_shot import ZeroShotClassification
from weightflow.shared.modeling.tasks.zero_shot_runtime import ZeroShotRuntime
from weightflow.shared.stats import wilson

NAME = "scripted-classification"
SCRIPT_ENV = "WEIGHTFLOW_TEST_SCRIPT"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz", "the", "a", "is"]


def make_checkpoint(directory: Path, name: str, *, padding_params: int = 0) -> Path:
    """A tiny BERT encoder checkpoint (safetensors, tokenizer) that says which scripted candidate it is.
    `padding_params` adds an unused uint8 tensor, so a candidate can be of a larger size class."""
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(sum(map(ord, name)))
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    config.scripted_name = name  # type: ignore[attr-defined]
    model = BertModel(config)
    model.save_pretrained(str(directory), safe_serialization=True)
    if padding_params:
        tensors = {"scripted.padding": torch.zeros(padding_params, dtype=torch.uint8)}
        save_file(tensors, str(directory / "padding.safetensors"), metadata={"format": "pt"})
        index = {"metadata": {}, "weight_map": {"scripted.padding": "padding.safetensors"}}
        from safetensors import safe_open

        with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
            index["weight_map"].update({k: "model.safetensors" for k in f.keys()})  # noqa: SIM118
        (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizerFast(vocab_file=str(directory / "vocab.txt")).save_pretrained(str(directory))
    return directory


def write_script(path: Path, scores: dict[str, float]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(scores))
    tmp.replace(path)


def _lookup(key: tuple[str, ...]) -> float:
    script: dict[str, float] = json.loads(Path(os.environ[SCRIPT_ENV]).read_text())
    best: tuple[int, float] | None = None
    for pattern, score in script.items():
        parts = pattern.split("/")
        if len(parts) == len(key) and all(p in ("*", k) for p, k in zip(parts, key, strict=True)):
            exact = sum(p != "*" for p in parts)
            if best is None or exact > best[0]:
                best = (exact, score)
    if best is None:
        raise KeyError(f"the test script has no score for {'/'.join(key)}")
    return best[1]


def _variant(model_dir: Path) -> str:
    return ("scripted-int8" if (model_dir / "scripted.json").is_file() else
            "int8" if (model_dir / "quantization.json").is_file() else
            "fp32+offload" if (model_dir / PLACEMENT_FILE).is_file() else "fp32")


def describe(loaded: LoadedModel) -> tuple[str, str, str]:
    """(candidate, variant, adapter 0/1) of a loaded scripted checkpoint."""
    name = str(getattr(loaded.model.config, "scripted_name", "?"))
    variant = _variant(Path(loaded.model_dir))
    adapter = any(type(m).__name__ == "LoraWrapped" for m in loaded.model.modules())
    return name, variant, "1" if adapter else "0"


class ScriptedRuntime(ZeroShotRuntime):
    """The zero-shot model work with the scores, general score and peak the script says."""

    def evaluate(self, loaded: LoadedModel, spec: TaskSpec, rows: Sequence[Any], metric: str,
                 hardware: HardwareProfile, confidence: float = 0.95) -> Measurement:
        split = str(rows[0].id).split("-")[0]
        score = _lookup((*describe(loaded), split))
        correct = round(score * len(rows))
        try:
            latency = _lookup((*describe(loaded), "latency"))
        except KeyError:
            latency = 5.0
        # the sample log as scripted: the first `correct` rows right, the others given another label
        others = {r.label: next((n for n in label_names(spec) if n != r.label), "") for r in rows}
        predicted = [r.label if i < correct else others[r.label] for i, r in enumerate(rows)]
        return measurement(score=correct / len(rows), metric=metric, n=len(rows),
                           interval=wilson(correct, len(rows), confidence), score_std=0.0, binary=True,
                           latencies_ms=[latency] * 4, seconds=len(rows) / 1000, hardware=hardware,
                           samples=labelled_samples(rows, predicted, [latency] * 4))

    def general_score(self, loaded: LoadedModel, spec: TaskSpec, rows: Sequence[Any]) -> float:
        name, variant, adapter = describe(loaded)
        try:
            return _lookup((name, variant, adapter, "general"))
        except KeyError:
            return 0.8

    def training_loss(self, loaded: LoadedModel, spec: TaskSpec, rows: Sequence[Any]) -> Any:
        inputs = self.inputs(loaded, [r.text for r in rows])
        return loaded.model(**inputs).last_hidden_state.pow(2).mean()

    def measure_peak(self, model_dir: Path, spec: TaskSpec, device: str) -> PeakMeasured:
        """The script's `name/variant/*/peak` (MB) when set, else the stored weights: the tiny models' real
        peak is the interpreter's noise, and the scripted budgets are a few MB. An offloaded variant's scripted
        peak is what it streams: the weights its placement keeps on the device are added to it."""
        config = json.loads((Path(model_dir) / "config.json").read_text())
        variant = _variant(Path(model_dir))
        placed = placement.read(Path(model_dir))
        try:
            peak = int(_lookup((str(config.get("scripted_name", "?")), variant, "0", "peak")) * 2**20)
            if placed is not None and peak >= 0:  # an offloaded peak: what stays on the device plus the scripted rest
                peak += placed.on_device_bytes
        except KeyError:
            peak = sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))
        if peak < 0:  # a negative peak in the script: the measuring child ran past its time
            raise subprocess.TimeoutExpired(cmd="python -m shared.modeling.peak", timeout=1800)
        return PeakMeasured(peak_bytes=peak, load_peak_bytes=peak, serve_peak_bytes=peak, device=device,
                            method="scripted", batch=8, context=self.task.serving_context(spec), new_tokens=0,
                            serve_s=0.001)


class ScriptedClassification(ZeroShotClassification):
    name: ClassVar[str] = NAME
    runtime_class = ScriptedRuntime


tasks.register(NAME, ScriptedClassification())


class ScriptedInt8(Quantizer):
    """A scheme of the test's own: weightflow's int8 plus a marker file; tried first (no expected loss)."""

    scheme: ClassVar[str] = "scripted-int8"
    bytes_per_param: ClassVar[float] = 1.0
    expected_quality_loss: ClassVar[float] = 0.0

    def quantize(self, task: Task, model_dir: Path, out_dir: Path, spec: TaskSpec, calibration: Sequence[Any],
                 device: Any) -> Path:
        out = quantizers.get("int8").quantize(task, model_dir, out_dir, spec, calibration, device)
        (out / "scripted.json").write_text(json.dumps({"scheme": self.scheme, "calibration_rows": len(calibration)}))
        return out


quantizers.register(ScriptedInt8.scheme, ScriptedInt8())
