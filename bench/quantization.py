"""5. Quantization effect: each candidate before (fp32) and after each scheme weightflow has (INT8).

Both variants go through the code the fitting service uses (the `int8` quantizer's `quantize` on the
fp32 checkpoint, then the task's `load` on the saved directory, as the re-benchmark loads it) and are
measured with the zero-shot task's `evaluate` on the same eval set, alternating fp32 and int8 every
repetition. The embedding error is the mean cosine distance between the task's `embed` of the fp32 and
the int8 model on the same texts.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch

from bench.eval_throughput import eval_rows
from bench.harness import EXAMPLE_DIR, Config, Report, Row, Stat, interleave
from weightflow.contracts.measurement import Measurement
from weightflow.contracts.requirements import Requirements
from weightflow.contracts.requirements_doc import parse_requirements
from weightflow.shared.modeling.datasets import Example
from weightflow.shared.modeling.device import pick_device
from weightflow.shared.modeling.loading import weight_bytes
from weightflow.shared.modeling.protocols import LoadedModel
from weightflow.shared.modeling.registry import quantizers
from weightflow.shared.modeling.sources.builtin import materialize_candidate
from weightflow.shared.modeling.stored import task_of
from weightflow.shared.modeling.tasks.base import LATENCY_SAMPLES
from weightflow.shared.modeling.tasks.classification import ClassificationTask
from weightflow.shared.modeling.tasks.classification_runtime import ClassificationRuntime

NAME = "quantization"
SCHEME = "int8"
SCHEME_LABEL = "int8-weight-only"  # what the quantized checkpoint's quantization.json records
MB = 1e6
MiB = 1024 * 1024


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _evaluate(task: ClassificationTask, loaded: LoadedModel, req: Requirements, rows: Sequence[Example],
              out: list[Measurement]) -> None:
    out.append(task.runtime().evaluate(loaded, req.task, rows, req.quality.metric, req.deployment.hardware,
                             req.monitoring.confidence))


def embedding_error(task: ClassificationTask, ref: LoadedModel, quant: LoadedModel, texts: Sequence[str],
                    batch_size: int = 32) -> float:
    """Mean cosine distance between the reference and the quantized model's embeddings of the same texts."""
    if not texts:
        raise ValueError("the embedding error needs at least one text")

    def embed(loaded: LoadedModel) -> torch.Tensor:
        with torch.inference_mode():
            runtime = cast(ClassificationRuntime, task.runtime())
            return torch.cat([runtime.embed(loaded, texts[i: i + batch_size]).float().cpu()
                              for i in range(0, len(texts), batch_size)])

    a, b = embed(ref), embed(quant)
    return float((1.0 - (a * b).sum(dim=1)).mean())


def run(cfg: Config) -> Report:
    report = Report(NAME, f"5. Quantization effect (fp32 → {SCHEME_LABEL}) on the same eval set")
    device = pick_device(cfg.device)
    req = parse_requirements((EXAMPLE_DIR / "requirements.yaml").read_text())
    task = task_of(req.task)
    if not isinstance(task, ClassificationTask):
        raise TypeError(f"the example's task {task.name} is not a classification task")
    quantizer = quantizers.get(SCHEME)
    rows = eval_rows(cfg.smoke)[:48] if cfg.smoke else eval_rows(False)
    texts = [r.text for r in rows]
    reps = max(1, min(cfg.reps, 2) if cfg.smoke else cfg.reps)
    models = ["minilm-l3"] if cfg.smoke else ["minilm-l3", "minilm-l6"]
    report.config = {"examples": len(rows), "latency_samples": LATENCY_SAMPLES, "models": models,
                     "schemes": ["fp32", SCHEME], "device": str(device), "task": task.name}
    with tempfile.TemporaryDirectory(prefix="wf-bench-quant-") as tmp_name:
        tmp = Path(tmp_name)
        for name in models:
            fp32_dir = materialize_candidate(name, tmp / name / "fp32")
            # As fitting does: the scheme quantizes the stored fp32 checkpoint (calibration: the eval rows,
            # which int8 weight-only does not use) and writes a checkpoint directory.
            int8_dir = quantizer.quantize(task, fp32_dir, tmp / name / SCHEME, req.task, rows, device)
            fp32 = task.runtime().load(fp32_dir, device)
            int8 = task.runtime().load(int8_dir, device)
            results: dict[str, list[Measurement]] = {"fp32": [], SCHEME: []}

            interleave([partial(_evaluate, task, fp32, req, rows, results["fp32"]),
                        partial(_evaluate, task, int8, req, rows, results[SCHEME])], reps, warmup=1)
            after, before = results[SCHEME][1:], results["fp32"][1:]  # first call of each is the warm-up
            error = embedding_error(task, fp32, int8, texts[:128])

            def add(metric: str, unit: str, int8_values: list[float], fp32_values: list[float], better: Any,
                    note: str = "", name: str = name) -> None:
                report.add(Row(f"{name}: {metric}", unit, Stat.of(int8_values), Stat.of(fp32_values), "fp32 (before)",
                               better, note=note))

            add("weights on disk (model.safetensors)", "MB", [(int8_dir / "model.safetensors").stat().st_size / MB],
                [(fp32_dir / "model.safetensors").stat().st_size / MB], "lower",
                note=f"whole dir {_dir_bytes(int8_dir) / MB:.1f} vs {_dir_bytes(fp32_dir) / MB:.1f} MB "
                     "(tokenizer included)")
            add("weights in memory (params + buffers)", "MiB", [weight_bytes(int8.model) / MiB],
                [weight_bytes(fp32.model) / MiB], "lower",
                note="weightflow.shared.modeling.loading.weight_bytes; process RSS is in the memory_budget comparison")
            add("single-request latency p50", "ms", [m.latency_ms_p50 for m in after],
                [m.latency_ms_p50 for m in before], "lower")
            add("single-request latency p95", "ms", [m.latency_ms_p95 for m in after],
                [m.latency_ms_p95 for m in before], "lower")
            add("batched throughput", "examples/s", [m.throughput_per_s for m in after],
                [m.throughput_per_s for m in before], "higher")
            add("accuracy", "fraction", [m.extra.get("accuracy", m.score) for m in after],
                [m.extra.get("accuracy", m.score) for m in before], "higher",
                note=f"n={len(rows)}; mean cosine distance int8 vs fp32 embeddings {error:.2e}")
            del fp32, int8
    report.notes.append("weightflow side = after quantization (int8), baseline = before (fp32), ratio = int8 / fp32. "
                        "The 4-bit schemes (w4a16, awq) apply to causal LMs only: see lm_schemes.")
    report.notes.append("Int8 is weight-only: weights are dequantized to fp32 inside every forward, so it saves "
                        "memory, not compute; on CPU it is expected to be somewhat slower.")
    return report
