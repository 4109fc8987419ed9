"""5. Quantization effect: each candidate before (fp32) and after each scheme weightflow has (INT8).

Both variants go through the code the fitting service uses (`quantize_int8` + `save_quantized`, then
`load_encoder` on the saved directory, as the re-benchmark loads it) and are measured with
`evaluate_classification` on the same eval set, alternating fp32 and int8 every repetition.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from bench.eval_throughput import eval_rows
from bench.harness import EXAMPLE_DIR, Config, Report, Row, Stat, interleave
from services.requirements.domain import parse_requirements
from shared.modeling.catalog import materialize_candidate
from shared.modeling.datasets import Example
from shared.modeling.device import pick_device
from shared.modeling.encoder import Encoder, load_encoder
from shared.modeling.evaluation import ClassificationResult, evaluate_classification
from shared.modeling.quantization import SCHEME, quantization_error, quantize_int8, save_quantized

NAME = "quantization"
MB = 1e6
MiB = 1024 * 1024


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _evaluate(encoder: Encoder, rows: Sequence[Example], labels: Mapping[str, str], latency_samples: int,
              out: list[ClassificationResult]) -> None:
    out.append(evaluate_classification(encoder, rows, labels, latency_samples=latency_samples))


def run(cfg: Config) -> Report:
    report = Report(NAME, f"5. Quantization effect (fp32 → {SCHEME}) on the same eval set")
    device = pick_device(cfg.device)
    labels = parse_requirements((EXAMPLE_DIR / "requirements.yaml").read_text()).task.labels
    rows = eval_rows(cfg.smoke)[:48] if cfg.smoke else eval_rows(False)
    latency_samples = 8 if cfg.smoke else 32  # 32 = evaluate_classification's default, as the services use it
    texts = [r.text for r in rows]
    reps = max(1, min(cfg.reps, 2) if cfg.smoke else cfg.reps)
    models = ["minilm-l3"] if cfg.smoke else ["minilm-l3", "minilm-l6"]
    report.config = {"examples": len(rows), "latency_samples": latency_samples, "models": models,
                     "schemes": ["fp32", "int8"], "device": str(device)}
    with tempfile.TemporaryDirectory(prefix="wf-bench-quant-") as tmp_name:
        tmp = Path(tmp_name)
        for name in models:
            fp32_dir = materialize_candidate(name, tmp / name / "fp32")
            staged = load_encoder(fp32_dir, device)
            quantize_int8(staged.model)
            int8_dir = save_quantized(staged, tmp / name / "int8")
            del staged
            fp32 = load_encoder(fp32_dir, device)
            int8 = load_encoder(int8_dir, device)
            results: dict[str, list[ClassificationResult]] = {"fp32": [], "int8": []}

            interleave([partial(_evaluate, fp32, rows, labels, latency_samples, results["fp32"]),
                        partial(_evaluate, int8, rows, labels, latency_samples, results["int8"])], reps, warmup=1)
            after, before = results["int8"][1:], results["fp32"][1:]  # first call of each is the warm-up
            error = quantization_error(fp32, int8, texts[:128])

            def add(metric: str, unit: str, int8_values: list[float], fp32_values: list[float], better: Any,
                    note: str = "", name: str = name) -> None:
                report.add(Row(f"{name}: {metric}", unit, Stat.of(int8_values), Stat.of(fp32_values), "fp32 (before)",
                               better, note=note))

            add("weights on disk (model.safetensors)", "MB", [(int8_dir / "model.safetensors").stat().st_size / MB],
                [(fp32_dir / "model.safetensors").stat().st_size / MB], "lower",
                note=f"whole dir {_dir_bytes(int8_dir) / MB:.1f} vs {_dir_bytes(fp32_dir) / MB:.1f} MB "
                     "(tokenizer included)")
            add("weights in memory (params + buffers)", "MiB", [int8.weight_bytes() / MiB],
                [fp32.weight_bytes() / MiB], "lower",
                note="Encoder.weight_bytes(); process RSS is in the memory_budget comparison")
            add("single-request latency p50", "ms", [r.latency_ms_p50 for r in after],
                [r.latency_ms_p50 for r in before], "lower")
            add("single-request latency p95", "ms", [r.latency_ms_p95 for r in after],
                [r.latency_ms_p95 for r in before], "lower")
            add("batched throughput", "examples/s", [r.throughput_per_s for r in after],
                [r.throughput_per_s for r in before], "higher")
            add("accuracy", "fraction", [r.accuracy for r in after], [r.accuracy for r in before], "higher",
                note=f"n={len(rows)}; mean cosine distance int8 vs fp32 embeddings {error:.2e}")
    report.notes.append("weightflow side = after quantization (int8), baseline = before (fp32), ratio = int8 / fp32. "
                        "INT4 and other schemes: not implemented in weightflow (see memory_budget).")
    report.notes.append("Int8 is weight-only: weights are dequantized to fp32 inside every forward, so it saves "
                        "memory, not compute; on CPU it is expected to be somewhat slower.")
    return report
