"""1. Candidate evaluation throughput: weightflow's benchmark path vs a hand-written transformers loop.

weightflow batches texts of similar token length together (shared.modeling.length_buckets); the plain loop batches
in arrival order, as a hand-written loop does. Both must predict the same labels (the row says how many differ).

weightflow side: exactly what `services/benchmark/app.py::_measure` runs — `shared.modeling.stored.load_tree`
(tree materialized and every file sha256-verified, then the task's `load`), `shared.modeling.stored.rows`
(data file verified, rows validated) and the zero-shot task's `evaluate` (batched accuracy pass, then 2 + 32
single-request latencies, metrics and the score's interval). Baseline: the same model files, tokenizer
settings, batch size (32) and examples through plain `AutoTokenizer`/`AutoModel`, mean pooling and cosine to
label embeddings written here, no framework. lm-evaluation-harness is tried as a second baseline (see
`lm_eval_row`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from bench.harness import EXAMPLE_DIR, Config, Report, Row, Stat, bench_env, interleave, percentile
from weightflow.contracts.measurement import Measurement
from weightflow.contracts.requirements import Requirements
from weightflow.contracts.requirements_doc import parse_requirements
from weightflow.shared.artifacts import ArtifactStore
from weightflow.shared.modeling import stored
from weightflow.shared.modeling.datasets import Example, load_jsonl
from weightflow.shared.modeling.device import pick_device
from weightflow.shared.modeling.length_buckets import in_arrival_order, length_buckets, padded_tokens
from weightflow.shared.modeling.protocols import LoadedModel
from weightflow.shared.modeling.sources.builtin import materialize_candidate
from weightflow.shared.modeling.stored import load_tree, task_of
from weightflow.shared.modeling.tasks.base import LATENCY_SAMPLES
from weightflow.shared.modeling.tasks.classification import ClassificationTask
from weightflow.shared.modeling.tasks.classification_runtime import ClassificationRuntime

NAME = "eval_throughput"
BATCH_SIZE = ClassificationTask.batch_size  # 32, what the benchmark service evaluates with
MAX_LENGTH = ClassificationTask.max_length  # 128


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class PlainLoop:
    """The practical limit: a transformers model and tokenizer, nothing else."""

    tokenizer: Any
    model: Any
    device: torch.device

    @classmethod
    def load(cls, model_dir: Path, device: torch.device) -> PlainLoop:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True, dtype=torch.float32)
        model.to(device).eval()
        return cls(tokenizer, model, device)

    def embed(self, texts: Sequence[str], batch_size: int = BATCH_SIZE) -> torch.Tensor:
        chunks = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                batch = self.tokenizer(list(texts[i : i + batch_size]), padding=True, truncation=True,
                                       max_length=MAX_LENGTH, return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                chunks.append(F.normalize(pooled.float(), p=2, dim=-1).cpu())
        return torch.cat(chunks)

    def evaluate(self, texts: Sequence[str], gold: Sequence[str], labels: Mapping[str, str]) -> dict[str, Any]:
        """Accuracy and batched throughput, then single-request latencies — the same work as `Task.evaluate`."""
        names = list(labels)
        prototypes = self.embed([labels[n] for n in names])
        _sync(self.device)
        start = time.perf_counter()
        best = (self.embed(texts) @ prototypes.T).argmax(dim=1).tolist()
        _sync(self.device)
        seconds = time.perf_counter() - start
        accuracy = sum(names[i] == g for i, g in zip(best, gold, strict=True)) / len(gold)
        predictions = [names[i] for i in best]
        for text in texts[:2]:
            (self.embed([text]) @ prototypes.T).argmax(dim=1)
        latencies = []
        for text in texts[:LATENCY_SAMPLES]:
            t0 = time.perf_counter()
            (self.embed([text]) @ prototypes.T).argmax(dim=1)
            _sync(self.device)
            latencies.append((time.perf_counter() - t0) * 1000.0)
        return {"accuracy": accuracy, "throughput": len(texts) / seconds, "predictions": predictions,
                "latency_ms_p50": percentile(latencies, 50), "latency_ms_p95": percentile(latencies, 95)}


def _read_rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def eval_rows(smoke: bool) -> list[Example]:
    rows = load_jsonl(EXAMPLE_DIR / "eval.jsonl", Example)
    return rows[:96] if smoke else rows


def task_labels(req: Requirements) -> dict[str, str]:
    if not req.task.labels:
        raise ValueError("the example's requirements name no task.labels")
    return dict(req.task.labels)


def run(cfg: Config) -> Report:
    report = Report(NAME, "1. Candidate evaluation throughput (benchmark stage vs plain transformers loop)")
    device = pick_device(cfg.device)
    req = parse_requirements((EXAMPLE_DIR / "requirements.yaml").read_text())
    task = task_of(req.task)
    assert isinstance(task, ClassificationTask), "the example is a classification task"
    labels, hardware = task_labels(req), req.deployment.hardware
    metric, confidence = req.quality.metric, req.monitoring.confidence
    rows = eval_rows(cfg.smoke)
    reps = max(1, cfg.reps)
    models = ["minilm-l3"] if cfg.smoke else ["minilm-l3", "minilm-l6"]
    report.config = {"examples": len(rows), "batch_size": BATCH_SIZE, "latency_samples": LATENCY_SAMPLES,
                     "models": models, "device": str(device), "task": task.name, "metric": metric}

    def evaluate(loaded: LoadedModel, data: list[Example]) -> Measurement:
        return task.runtime().evaluate(loaded, req.task, data, metric, hardware, confidence)

    with tempfile.TemporaryDirectory(prefix="wf-bench-eval-") as tmp_name:
        tmp = Path(tmp_name)
        store = ArtifactStore(tmp / "artifacts")
        eval_file = tmp / "eval.jsonl"
        eval_file.write_text("".join(row.model_dump_json() + "\n" for row in rows))
        eval_digest = store.put_file(eval_file)
        texts, gold = [r.text for r in rows], [r.label for r in rows]
        for name in models:
            tree = store.put_tree(materialize_candidate(name, tmp / "stored" / name))
            plain_dir = materialize_candidate(name, tmp / "plain" / name)  # the same bytes, outside the store
            loaded = load_tree(store, tree, task, cfg.device)
            plain = PlainLoop.load(plain_dir, device)
            wf_measured: list[Measurement] = []
            base_measured: list[dict[str, Any]] = []

            def wf_measure(loaded: LoadedModel = loaded, out: list[Measurement] = wf_measured) -> None:
                out.append(evaluate(loaded, rows))

            def base_measure(plain: PlainLoop = plain, out: list[dict[str, Any]] = base_measured) -> None:
                out.append(plain.evaluate(texts, gold, labels))

            def wf_handler(tree: str = tree) -> None:
                fresh = load_tree(store, tree, task, cfg.device)
                evaluate(fresh, stored.rows(store, eval_digest, task, "eval"))

            def base_handler(plain_dir: Path = plain_dir) -> None:
                loop = PlainLoop.load(plain_dir, device)
                data = _read_rows(eval_file)
                loop.evaluate([r["text"] for r in data], [r["label"] for r in data], labels)

            wf_wall, base_wall = interleave([wf_measure, base_measure], reps, warmup=1)
            wf_measured, base_measured = wf_measured[1:], base_measured[1:]  # drop the warm-up call
            del wf_measured[reps:], base_measured[reps:]
            handler_reps = max(1, min(reps, 3))
            wf_path, base_path = interleave([wf_handler, base_handler], handler_reps, warmup=0)

            wf_acc = wf_measured[0].score
            base_acc = base_measured[0]["accuracy"]
            wf_predictions = [r.prediction for r in wf_measured[0].sample_rows or []]
            differing = sum(a != b for a, b in zip(wf_predictions, base_measured[0]["predictions"], strict=True))
            lengths = cast(ClassificationRuntime, task.runtime()).token_counts(loaded, texts)
            padded = padded_tokens(lengths, length_buckets(lengths, BATCH_SIZE))
            unsorted = padded_tokens(lengths, in_arrival_order(len(texts), BATCH_SIZE))
            report.add(Row(f"{name}: batched eval throughput", "examples/s",
                           Stat.of([m.throughput_per_s for m in wf_measured]),
                           Stat.of([b["throughput"] for b in base_measured]), "plain transformers loop", "higher",
                           note=f"n={len(rows)}, batch {BATCH_SIZE}; {differing} of {len(texts)} predictions differ "
                                f"(accuracy wf {wf_acc:.4f} / plain {base_acc:.4f}); length buckets pad to "
                                f"{padded} tokens vs {unsorted} in arrival order ({1 - padded / unsorted:.0%} saved, "
                                f"{sum(lengths)} real)",
                           extra={"accuracy_weightflow": wf_acc, "accuracy_baseline": base_acc,
                                  "predictions_differing": differing, "padded_tokens_bucketed": padded,
                                  "padded_tokens_arrival_order": unsorted, "real_tokens": sum(lengths)}))
            report.add(Row(f"{name}: single-request latency p50", "ms",
                           Stat.of([m.latency_ms_p50 for m in wf_measured]),
                           Stat.of([b["latency_ms_p50"] for b in base_measured]), "plain transformers loop", "lower",
                           note=f"{LATENCY_SAMPLES} requests of batch 1 per repetition"))
            report.add(Row(f"{name}: Task.evaluate() call, whole", "s", Stat.of(wf_wall), Stat.of(base_wall),
                           "plain transformers loop", "lower",
                           note="batched pass + 34 single requests (+ metrics and interval on the wf side); label "
                                "prototypes: plain every call, wf once per loaded model (LoadedModel.cache)"))
            report.add(Row(f"{name}: benchmark handler path", "s", Stat.of(wf_path), Stat.of(base_path),
                           "plain from_pretrained + same loop", "lower",
                           note="verified tree materialize + load + verified data load + evaluate"))
            del loaded, plain
            wf_end_to_end = Stat.of([len(rows) / s for s in wf_path])
        report.add(lm_eval_row(cfg, tmp, eval_file, labels, models[-1], wf_end_to_end))
    report.notes.append("ratio < 1 is better for s/ms rows, > 1 for examples/s rows; sides alternate each "
                        "repetition after one warm-up call each.")
    return report


# -- lm-evaluation-harness ----------------------------------------------------------------------------

LM_EVAL_WHY = (
    "lm-evaluation-harness scores only language models: every task output_type (loglikelihood, "
    "loglikelihood_rolling, multiple_choice, generate_until) is computed from token log-probabilities of a "
    "causal (AutoModelForCausalLM) or seq2seq LM. weightflow's candidates are sentence encoders (BertModel, mean "
    "pooling, cosine to label descriptions) and the packaged all-MiniLM-L6-v2 checkpoint has no LM head (only "
    "embeddings.*, encoder.*, pooler.* tensors). lm-eval can only load it as BertLMHeadModel with cls.predictions.* "
    "newly (randomly) initialised, and BERT's tokenizer has no BOS/EOS, so it needs prefix_token_id=[CLS] to run at "
    "all; it then scores one log-likelihood request per answer choice on a random head: a different computation "
    "with chance-level accuracy, so neither its score nor its speed measures what weightflow measures."
)


def _lm_eval_python() -> str | None:
    """An interpreter that can import lm_eval: BENCH_LM_EVAL_PYTHON, else this one."""
    for candidate in (os.environ.get("BENCH_LM_EVAL_PYTHON"), sys.executable):
        if not candidate:
            continue
        probe = subprocess.run([candidate, "-c", "import lm_eval"], capture_output=True, env=bench_env(),
                               timeout=120, check=False)
        if probe.returncode == 0:
            return candidate
    return None


def lm_eval_task(tmp: Path, eval_file: Path, labels: Mapping[str, str]) -> Path:
    """The eval set as a local lm-eval multiple-choice task (label names as the answer choices)."""
    task_dir = tmp / "lm_eval_tasks"
    task_dir.mkdir(parents=True, exist_ok=True)
    names = list(labels)
    quoted = "[" + ", ".join("'" + n.replace("'", "") + "'" for n in names) + "]"
    (task_dir / "wf_support_tickets.yaml").write_text(textwrap.dedent(f"""\
        task: wf_support_tickets
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {eval_file}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "Support ticket: {{{{text}}}}\\nCategory:"
        doc_to_choice: {json.dumps(names)}
        doc_to_target: "{{{{{quoted}.index(label)}}}}"
        metric_list:
          - metric: acc
        """))
    return task_dir


def lm_eval_row(cfg: Config, tmp: Path, eval_file: Path, labels: Mapping[str, str], model: str,
                wf_end_to_end: Stat) -> Row:
    """lm-eval's CLI on the same model files and examples, against weightflow's whole benchmark handler
    path (load included on both sides) as examples/s; reported, but not a like-for-like comparison."""
    python = _lm_eval_python()
    if python is None:
        return Row("lm-evaluation-harness on the same model and data", "examples/s", None,
                   baseline_name="lm-eval", note="not run: lm_eval is not importable here (it is not a project "
                   "dependency; `pip install lm-eval` into a separate venv and set BENCH_LM_EVAL_PYTHON to its "
                   "python). " + LM_EVAL_WHY)
    task_dir = lm_eval_task(tmp, eval_file, labels)
    model_dir = materialize_candidate(model, tmp / "lm_eval_model" / model)
    out_dir = tmp / "lm_eval_out"
    limit = ["--limit", "32"] if cfg.smoke else []
    cls_id = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True).cls_token_id
    cmd = [python, "-m", "lm_eval", "--model", "hf",
           "--model_args", f"pretrained={model_dir},dtype=float32,backend=causal,prefix_token_id={cls_id}",
           "--tasks", "wf_support_tickets", "--include_path", str(task_dir), "--batch_size", str(BATCH_SIZE),
           "--device", str(pick_device(cfg.device)), "--output_path", str(out_dir), *limit]
    env = bench_env()
    env["HF_DATASETS_OFFLINE"] = "1"
    env["HF_DATASETS_CACHE"] = str(tmp / "hf_datasets")
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, check=False)
    seconds = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    head_warning = "newly initialized" in log or "MISSING" in log
    if proc.returncode != 0:
        tail = " ".join(log.strip().splitlines()[-3:])[:400]
        return Row("lm-evaluation-harness on the same model and data", "examples/s", None,
                   baseline_name="lm-eval", note=f"lm-eval failed (exit {proc.returncode}): {tail}. {LM_EVAL_WHY}")
    accuracy = _lm_eval_accuracy(out_dir)
    n = 32 if cfg.smoke else sum(1 for line in eval_file.read_text().splitlines() if line.strip())
    note = (f"ran as a causal LM (backend=causal, prefix_token_id={cls_id}), one run, whole CLI wall incl. load: "
            f"{seconds:.1f} s for n={n} ({len(labels)} log-likelihood requests each), accuracy "
            f"{accuracy if accuracy is None else round(accuracy, 4)} (chance {1 / len(labels):.2f}); LM head "
            f"{'reported MISSING, newly initialized' if head_warning else 'status not reported'}. "
            f"NOT comparable: {LM_EVAL_WHY}")
    return Row(f"{model}: end-to-end eval incl. load vs lm-eval (NOT like-for-like)", "examples/s", wf_end_to_end,
               Stat.of([n / seconds]), "lm-eval CLI (hf, causal)", "higher", note=note,
               extra={"lm_eval_accuracy": accuracy, "lm_eval_seconds": seconds, "random_head_warning": head_warning})


def _lm_eval_accuracy(out_dir: Path) -> float | None:
    for path in sorted(out_dir.rglob("results*.json")):
        try:
            results = json.loads(path.read_text())["results"]["wf_support_tickets"]
        except (KeyError, ValueError):
            continue
        for key in ("acc,none", "acc"):
            if key in results:
                return float(results[key])
    return None
