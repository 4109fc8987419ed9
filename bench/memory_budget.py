"""4. Memory budget accuracy: fitting's predicted serving memory vs measured peak, per model and variant.

Predicted: `services.fitting.domain.memory_budget`, called exactly as the fitting service calls it
(fp32 from the catalog's parameter count at 4 bytes/param; int8 with the quantized encoder's measured
`weight_bytes()`), i.e. weights × 1.3 + activations at the serving batch (8 × 128 tokens).

Measured, each time in a fresh child process (so nothing else is resident): on CPU, resident memory
growth from just before `load_encoder` (torch/transformers already imported) — the peak while loading
(`VmHWM`, reset through /proc/self/clear_refs), the resident size after loading, and the peak while
embedding one serving batch of 8 texts truncated to 128 tokens; on CUDA, `torch.cuda.max_memory_allocated`.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.harness import EXAMPLE_DIR, Config, Report, Row, Stat, bench_env
from bench.procmem import reset_peak, status_kib

NAME = "memory_budget"
MiB = 1024 * 1024


def _status_kib(field: str) -> float:
    value = status_kib(field)
    if value is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return value


def _reset_peak() -> None:
    if not reset_peak():
        raise RuntimeError("cannot reset the peak RSS: /proc/self/clear_refs is not writable")


def _trimmed_rss_mib() -> float:
    """Resident size after glibc returns freed heap to the OS: what is live, not what the allocator kept."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return _status_kib("VmRSS") / 1024.0


def serving_texts(batch: int) -> list[str]:
    """`batch` texts long enough to be truncated at 128 tokens, so the batch is exactly batch × 128."""
    rows = [json.loads(line)["text"] for line in (EXAMPLE_DIR / "eval.jsonl").read_text().splitlines() if line]
    return [" ".join(rows[i * 12 : i * 12 + 12]) for i in range(batch)]


def _child_main(model_dir: str, device_name: str) -> None:
    import torch

    from services.fitting.domain import SERVING_BATCH
    from shared.modeling.device import pick_device
    from shared.modeling.encoder import load_encoder

    device = pick_device(device_name)
    texts = serving_texts(SERVING_BATCH)
    out: dict[str, Any] = {"device": str(device)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        gpu_base = torch.cuda.memory_allocated(device)
        encoder = load_encoder(Path(model_dir), device)
        out["load_peak_mib"] = (torch.cuda.max_memory_allocated(device) - gpu_base) / MiB
        out["after_load_mib"] = (torch.cuda.memory_allocated(device) - gpu_base) / MiB
        torch.cuda.reset_peak_memory_stats(device)
        encoder.embed(texts, batch_size=SERVING_BATCH)
        torch.cuda.synchronize(device)
        out["batch_peak_mib"] = (torch.cuda.max_memory_allocated(device) - gpu_base) / MiB
        out["method"] = "torch.cuda.max_memory_allocated"
    else:
        _reset_peak()
        base = _status_kib("VmRSS")
        encoder = load_encoder(Path(model_dir), device)
        out["load_peak_mib"] = (_status_kib("VmHWM") - base) / 1024.0
        out["after_load_mib"] = (_status_kib("VmRSS") - base) / 1024.0
        _reset_peak()
        encoder.embed(texts, batch_size=SERVING_BATCH)
        out["batch_peak_mib"] = (_status_kib("VmHWM") - base) / 1024.0
        out["after_batch_mib"] = (_status_kib("VmRSS") - base) / 1024.0
        out["after_trim_mib"] = _trimmed_rss_mib() - base / 1024.0
        out["method"] = "VmRSS/VmHWM growth (clear_refs reset)"
        out["base_rss_mib"] = base / 1024.0
    tokens = encoder._inputs(texts)["input_ids"].shape
    out["batch_shape"] = list(tokens)
    out["weight_bytes"] = encoder.weight_bytes()
    out["param_count"] = encoder.param_count()
    print(json.dumps(out))


def _child(model_dir: Path, device: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "bench.memory_budget", str(model_dir), device],
                          capture_output=True, text=True, env=bench_env(), timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed for {model_dir}: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run(cfg: Config) -> Report:
    from services.fitting import domain
    from shared.modeling.catalog import candidate_spec, materialize_candidate
    from shared.modeling.encoder import load_encoder
    from shared.modeling.quantization import quantize_int8, save_quantized

    report = Report(NAME, "4. Memory budget accuracy (fitting's prediction vs measured peak)")
    reps = 1 if cfg.smoke else max(1, min(cfg.reps, 3))
    models = ["minilm-l3"] if cfg.smoke else ["minilm-l3", "minilm-l6"]
    report.config = {"models": models, "serving_batch": domain.SERVING_BATCH, "serving_seq": domain.SERVING_SEQ,
                     "overhead": domain.DEFAULT_OVERHEAD, "fresh_processes_per_variant": reps}
    with tempfile.TemporaryDirectory(prefix="wf-bench-mem-") as tmp_name:
        tmp = Path(tmp_name)
        for name in models:
            spec = candidate_spec(name)
            fp32_dir = materialize_candidate(name, tmp / name / "fp32")
            encoder = load_encoder(fp32_dir)
            quantize_int8(encoder.model)
            int8_dir = save_quantized(encoder, tmp / name / "int8")
            int8_weight_bytes = encoder.weight_bytes()
            del encoder
            arch = domain.Architecture.from_config(json.loads((fp32_dir / "config.json").read_text()))
            for variant, model_dir, weight_bytes in (("fp32", fp32_dir, None), ("int8", int8_dir, int8_weight_bytes)):
                budget = domain.memory_budget(variant, spec.params, arch, 0, weight_bytes=weight_bytes)
                predicted = budget.total_bytes / MiB
                runs = [_child(model_dir, cfg.device) for _ in range(reps)]
                load_peak = [r["load_peak_mib"] for r in runs]
                serving = [max(r["after_load_mib"], r["batch_peak_mib"]) for r in runs]
                whole = [max(a, b) for a, b in zip(load_peak, serving, strict=True)]
                detail = {"predicted": budget.model_dump(), "runs": runs}
                for label, measured, what in (
                    ("peak incl. loading", whole, "max RSS growth from before load through one serving batch"),
                    ("serving batch peak", serving,
                     "peak while embedding one serving batch (or resident after load if higher)"),
                    *([("live after malloc_trim", [r["after_trim_mib"] for r in runs],
                        "resident after the batch once glibc returned freed heap")] if "after_trim_mib" in runs[0]
                      else []),
                ):
                    stat = Stat.of(measured)
                    error = (predicted - stat.median) / stat.median
                    report.add(Row(f"{name} {variant}: predicted vs measured, {label}", "MiB",
                                   Stat.of([predicted]), stat, "measured", "none",
                                   note=f"relative error {error:+.1%} ({what}); {runs[0]['method']}",
                                   extra={"relative_error": error, **(detail if label.startswith("peak") else {})}))
            int4 = domain.memory_budget("int4", spec.params, arch, 0)
            report.add(Row(f"{name} int4: predicted, not measurable", "MiB", Stat.of([int4.total_bytes / MiB]), None,
                           note="not supported: weightflow quantizes only int8 (weight-only, per-channel); "
                                "QuantizationSpec allows only 'int8' and fitting.domain.next_scheme tries only int8, "
                                "so there is no int4 model to measure (the formula's 0.5 byte/param is nominal)"))
    report.notes.append("ratio = predicted / measured (1.0 = exact; > 1 over-predicts, i.e. safe). Relative error = "
                        "(predicted − measured) / measured.")
    report.notes.append("CPU RSS growth includes the tokenizer, allocator slack and the temporary fp32 copies that "
                        "Int8Linear makes while dequantizing on the fly, which is what a serving process really holds.")
    return report


if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2])
