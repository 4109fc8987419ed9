"""13. Generation throughput: the generation task's evaluation pass vs a plain transformers `generate` loop.

weightflow side: `Generation.runtime().evaluate`'s batched pass (the task's prompt, left padding, greedy, at most
`task.max_new_tokens`, batches of the task's size), timed and counted by the task itself (`tokens_per_s`, the
tokens generated up to each row's end of sequence). Baseline: the same model files and prompts through plain
`AutoTokenizer`/`AutoModelForCausalLM` and one `generate` call per batch of the same size, written here. Both
must give the same answers (the row says how many differ). Model: SmolLM2-135M-Instruct from
examples/language-models (`python examples/language-models/make_models.py` first; the comparison is skipped,
saying so, without it); `--smoke` uses 16 rows of its orders example.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.harness import Config, Report, Row, Stat, interleave
from weightflow.contracts.requirements_doc import parse_requirements
from weightflow.shared.modeling.datasets import load_jsonl
from weightflow.shared.modeling.device import pick_device
from weightflow.shared.modeling.tasks.generation import Generation, GenerationRow
from weightflow.shared.modeling.tasks.language import first_line, render_prompt

NAME = "generation_throughput"
ROOT = Path(__file__).resolve().parents[1]
LM_DIR = ROOT / "examples" / "language-models"
MODEL = LM_DIR / "models" / "smollm2-135m"


class PlainGenerate:
    """The practical limit: a causal LM, its tokenizer, `generate`, nothing else."""

    def __init__(self, model_dir: Path, device: torch.device) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True, dtype=torch.float32)
        self.model = model.to(device).eval()
        self.device = device

    def run(self, prompts: list[str], batch_size: int, max_new_tokens: int) -> tuple[list[str], int, float]:
        """(answers, tokens generated, seconds) over `prompts` in batches."""
        answers: list[str] = []
        tokens = 0
        start = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(prompts), batch_size):
                batch = self.tokenizer(prompts[i: i + batch_size], padding=True, return_tensors="pt").to(self.device)
                out = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                          pad_token_id=self.tokenizer.pad_token_id,
                                          eos_token_id=self.tokenizer.eos_token_id)
                new = out[:, batch["input_ids"].shape[1]:]
                tokens += int((new != self.tokenizer.pad_token_id).sum())
                answers += [first_line(t) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return answers, tokens, time.perf_counter() - start


def run(cfg: Config) -> Report:
    report = Report(NAME, "13. Generation throughput (generation task's evaluation vs a plain generate loop)")
    if not (MODEL / "config.json").is_file():
        report.notes.append(f"not run: {MODEL.relative_to(ROOT)} is missing; run "
                            "`python examples/language-models/make_models.py` first")
        return report
    device = pick_device(cfg.device)
    req = parse_requirements((LM_DIR / "orders.yaml").read_text())
    task = Generation()
    runtime = task.runtime()
    rows = load_jsonl(LM_DIR / "orders-eval.jsonl", GenerationRow)
    rows = rows[:16] if cfg.smoke else rows
    spec, hardware = req.task, req.deployment.hardware
    loaded = runtime.load(MODEL, device)
    plain = PlainGenerate(MODEL, device)
    prompts = [render_prompt(spec, r.input) for r in rows]  # no chat template in this example: the same text
    report.config = {"rows": len(rows), "batch_size": task.batch_size, "max_new_tokens": spec.max_new_tokens,
                     "model": MODEL.name, "device": str(device)}
    wf: list[Any] = []
    base: list[tuple[list[str], int, float]] = []

    def wf_side() -> float:
        m = runtime.evaluate(loaded, spec, rows, req.quality.metric, hardware, req.monitoring.confidence)
        wf.append(m)
        return float(m.extra["tokens_per_s"])

    def base_side() -> float:
        answers, tokens, seconds = plain.run(prompts, task.batch_size, spec.max_new_tokens)
        base.append((answers, tokens, seconds))
        return tokens / seconds

    reps = max(1, cfg.reps if not cfg.smoke else 1)
    wf_rate, base_rate = interleave([wf_side, base_side], reps, warmup=1)
    wf_answers = [s.prediction for s in wf[-1].sample_rows or []]
    differing = sum(a != b for a, b in zip(wf_answers, base[-1][0], strict=True))
    report.add(Row("batched generation", "tokens/s", Stat.of(wf_rate), Stat.of(base_rate), "plain generate loop",
                   "higher", note=f"n={len(rows)}, batch {task.batch_size}, greedy, at most {spec.max_new_tokens} new "
                                  f"tokens; {differing} of {len(rows)} answers differ; tokens wf "
                                  f"{wf[-1].extra['tokens_per_task'] * len(rows):.0f} / plain {base[-1][1]}",
                   extra={"answers_differing": differing}))
    report.notes.append("the weightflow side's rate is the task's own `tokens_per_s` (its batched pass only; the "
                        "single-request latencies and time to first token it also measures are not in it)")
    return report
