"""4. Memory budget accuracy: fitting's predicted serving memory vs measured peak, per model and variant.

Predicted: `shared.modeling.budget.memory_budget`, called exactly as the fitting service calls it: both
checkpoints are put in an artifact store, the architecture comes from the stored tree's config.json
(`shared.modeling.stored.architecture`), fp32 from the builtin source's parameter count at 4 bytes/param,
int8 with `weight_bytes` = the stored int8 tree's *.safetensors file sizes (what fitting passes since the
model-layer refactor; before it, the quantized encoder's in-memory `weight_bytes()`), i.e. weights × 1.3 +
activations at the serving batch (8 × 128 tokens).

Measured, each time in a fresh child process (so nothing else is resident): on CPU, resident memory
growth from just before the zero-shot task's `load` (torch/transformers already imported) — the peak while
loading (`VmHWM`, reset through /proc/self/clear_refs), the resident size after loading, and the peak while
embedding one serving batch of 8 texts truncated to 128 tokens; on CUDA, `torch.cuda.max_memory_allocated`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.harness import EXAMPLE_DIR, Config, Report, Row, Stat, bench_env
from bench.procmem import require_kib, require_reset_peak, trimmed_rss_kib
from weightflow.contracts.requirements_doc import parse_requirements
from weightflow.shared.artifacts import ArtifactStore
from weightflow.shared.modeling.datasets import Example, load_jsonl

NAME = "memory_budget"
TASK = "zero-shot-classification"  # the example's task: a plain encoder, mean pooling
MiB = 1024 * 1024


def serving_texts(batch: int) -> list[str]:
    """`batch` texts long enough to be truncated at 128 tokens, so the batch is exactly batch × 128."""
    rows = [json.loads(line)["text"] for line in (EXAMPLE_DIR / "eval.jsonl").read_text().splitlines() if line]
    return [" ".join(rows[i * 12 : i * 12 + 12]) for i in range(batch)]


def _child_main(model_dir: str, device_name: str) -> None:
    import torch

    from weightflow.shared.modeling.budget import SERVING_BATCH
    from weightflow.shared.modeling.device import pick_device
    from weightflow.shared.modeling.loading import weight_bytes
    from weightflow.shared.modeling.quantizers.int8_modules import quantized_numel
    from weightflow.shared.modeling.registry import tasks
    from weightflow.shared.modeling.tasks.classification import ClassificationTask
    from weightflow.shared.modeling.tasks.classification_runtime import ClassificationRuntime

    task = tasks.get(TASK)
    if not isinstance(task, ClassificationTask):
        raise TypeError(f"{TASK} is not a classification task")
    runtime = task.runtime()
    assert isinstance(runtime, ClassificationRuntime)
    # Import the loading code before the baseline is read, so the growth is the model's, not the libraries':
    # the task imports transformers lazily on its first `load`, and transformers imports modeling_utils (with
    # scipy, sympy, accelerate) and the architecture's module only when it resolves the model class.
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    from weightflow.shared.modeling import loading

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    model_class = MODEL_MAPPING[type(config)]
    preloaded = [loading.__name__, getattr(model_class, "__name__", str(model_class))]
    del config
    device = pick_device(device_name)
    texts = serving_texts(SERVING_BATCH)
    out: dict[str, Any] = {"device": str(device), "preloaded": preloaded}

    def serve_batch(loaded: Any) -> None:
        with torch.inference_mode():
            runtime.embed(loaded, texts)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        gpu_base = torch.cuda.memory_allocated(device)
        loaded = runtime.load(Path(model_dir), device)
        out["load_peak_mib"] = (torch.cuda.max_memory_allocated(device) - gpu_base) / MiB
        out["after_load_mib"] = (torch.cuda.memory_allocated(device) - gpu_base) / MiB
        torch.cuda.reset_peak_memory_stats(device)
        serve_batch(loaded)
        torch.cuda.synchronize(device)
        out["batch_peak_mib"] = (torch.cuda.max_memory_allocated(device) - gpu_base) / MiB
        out["method"] = "torch.cuda.max_memory_allocated"
    else:
        require_reset_peak()
        base = require_kib("VmRSS")
        loaded = runtime.load(Path(model_dir), device)
        out["load_peak_mib"] = (require_kib("VmHWM") - base) / 1024.0
        out["after_load_mib"] = (require_kib("VmRSS") - base) / 1024.0
        require_reset_peak()
        serve_batch(loaded)
        out["batch_peak_mib"] = (require_kib("VmHWM") - base) / 1024.0
        out["after_batch_mib"] = (require_kib("VmRSS") - base) / 1024.0
        out["after_trim_mib"] = trimmed_rss_kib() / 1024.0 - base / 1024.0
        out["method"] = "VmRSS/VmHWM growth (clear_refs reset)"
        out["base_rss_mib"] = base / 1024.0
    out["batch_shape"] = list(runtime.inputs(loaded, texts)["input_ids"].shape)
    out["weight_bytes"] = weight_bytes(loaded.model)
    out["param_count"] = sum(p.numel() for p in loaded.model.parameters()) + quantized_numel(loaded.model)
    print(json.dumps(out))


def _child(model_dir: Path, device: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "bench.memory_budget", str(model_dir), device],
                          capture_output=True, text=True, env=bench_env(), timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed for {model_dir}: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _stored_weight_bytes(store: ArtifactStore, tree_digest: str) -> int:
    """What fitting passes as an int8 variant's `weight_bytes`: the stored tree's *.safetensors sizes
    (services/fitting/app.py `_stored_weight_bytes`, private there, so written out again here)."""
    return sum(store.size_of(d) for name, d in store.tree_files(tree_digest).items() if name.endswith(".safetensors"))


def run(cfg: Config) -> Report:
    from weightflow.contracts.benchmark import UNQUANTIZED
    from weightflow.contracts.requirements import CandidateRef
    from weightflow.shared.modeling import budget
    from weightflow.shared.modeling.device import pick_device
    from weightflow.shared.modeling.registry import quantizers, sources, tasks
    from weightflow.shared.modeling.sources.builtin import materialize_candidate
    from weightflow.shared.modeling.stored import architecture

    report = Report(NAME, "4. Memory budget accuracy (fitting's prediction vs measured peak)")
    reps = 1 if cfg.smoke else max(1, min(cfg.reps, 3))
    models = ["minilm-l3"] if cfg.smoke else ["minilm-l3", "minilm-l6"]
    report.config = {"models": models, "serving_batch": budget.SERVING_BATCH, "serving_seq": budget.SERVING_SEQ,
                     "overhead": budget.DEFAULT_OVERHEAD, "fresh_processes_per_variant": reps,
                     "int8_weight_bytes": "stored *.safetensors sizes (as fitting passes them)"}
    task = tasks.get(TASK)
    quantizer = quantizers.get("int8")
    spec = parse_requirements((EXAMPLE_DIR / "requirements.yaml").read_text()).task
    calibration = load_jsonl(EXAMPLE_DIR / "eval.jsonl", Example)
    with tempfile.TemporaryDirectory(prefix="wf-bench-mem-") as tmp_name:
        tmp = Path(tmp_name)
        store = ArtifactStore(tmp / "artifacts")
        for name in models:
            resolved = sources.get("builtin").resolve(CandidateRef(builtin=name), None, None)
            fp32_dir = materialize_candidate(name, tmp / name / "fp32")
            fp32_tree = store.put_tree(fp32_dir)
            int8_dir = quantizer.quantize(task, store.materialize_tree(fp32_tree), tmp / name / "int8", spec,
                                          calibration, pick_device(cfg.device))
            int8_tree = store.put_tree(int8_dir)
            arch = architecture(store, fp32_tree)
            variants: tuple[tuple[str, Path, int | None], ...] = (
                (UNQUANTIZED, fp32_dir, None), ("int8", int8_dir, _stored_weight_bytes(store, int8_tree)))
            for variant, model_dir, weight_bytes in variants:
                predicted_budget = budget.memory_budget(variant, resolved.params, arch, 0, weight_bytes=weight_bytes)
                predicted = predicted_budget.total_bytes / MiB
                runs = [_child(model_dir, cfg.device) for _ in range(reps)]
                load_peak = [r["load_peak_mib"] for r in runs]
                serving = [max(r["after_load_mib"], r["batch_peak_mib"]) for r in runs]
                whole = [max(a, b) for a, b in zip(load_peak, serving, strict=True)]
                detail = {"predicted": predicted_budget.model_dump(), "runs": runs}
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
            int4 = budget.memory_budget("int4", resolved.params, arch, 0, bytes_per_param=0.5)
            report.add(Row(f"{name} int4: predicted, not measurable", "MiB", Stat.of([int4.total_bytes / MiB]), None,
                           note="not measurable for an encoder: the 4-bit schemes (w4a16, awq; registered: "
                                f"{', '.join(quantizers.names())}) quantize causal LMs only (llmcompressor loads "
                                "AutoModelForCausalLM), so there is no 4-bit encoder to measure; the prediction uses a "
                                "nominal 0.5 byte/param. Decoders' 4-bit rows, measured, are in lm_schemes"))
    report.notes.append("ratio = predicted / measured (1.0 = exact; > 1 over-predicts, i.e. safe). Relative error = "
                        "(predicted − measured) / measured.")
    report.notes.append("CPU RSS growth includes the tokenizer, allocator slack and the temporary fp32 copies that "
                        "Int8Linear makes while dequantizing on the fly, which is what a serving process really holds.")
    return report


if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2])
