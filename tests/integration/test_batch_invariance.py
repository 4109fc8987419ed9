"""An evaluation's predictions do not depend on its batch size: every built-in task type, evaluated 1 and 8
rows per forward pass, on small real models (MiniLM, fp32 and int8; a tiny BERT with a head, fp32 and int8;
a tiny Llama), with texts of different lengths so that batches are padded. Peers have been criticised
for exactly this (lm-evaluation-harness #1645, #3357); padding, its side and int8 activation scales are
what usually breaks it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from weightflow.contracts.requirements import HardwareProfile, TaskSpec
from weightflow.shared.modeling.datasets import Example, load_jsonl
from weightflow.shared.modeling.protocols import LoadedModel, Task
from weightflow.shared.modeling.quantizers.int8_modules import quantize_int8
from weightflow.shared.modeling.registry import BUILTIN_MODULES, tasks
from weightflow.shared.modeling.sources.builtin import materialize_candidate
from weightflow.shared.modeling.tasks.classification import ClassificationTask
from weightflow.shared.modeling.tasks.generation import GenerationRow
from weightflow.shared.modeling.tasks.multiple_choice import ChoiceRow

from ..conftest import EXAMPLE_DIR, example_script
from ..lm_fixtures import tiny_llama
from ..unit.test_byo_models import LABELS as HEAD_LABELS
from ..unit.test_byo_models import SPEC as HEAD_SPEC
from ..unit.test_byo_models import tiny_classifier

pytestmark = pytest.mark.slow

HARDWARE = HardwareProfile(profile="t", memory_mb=100, cost_per_hour_usd=0.1)
CPU = torch.device("cpu")
SIZES = (1, 8)
SCORE_ATOL = 1e-5


def at_batch(task: Task, n: int) -> Task:
    """The task evaluating `n` rows per forward pass: its class with the `batch_size` ClassVar overridden."""
    return type(f"{type(task).__name__}At{n}", (type(task),), {"batch_size": n})()


def spread(loaded: LoadedModel, std: float = 0.3) -> LoadedModel:
    """The tiny Llama's weights redrawn wider: at its own init every prompt decodes to the same tokens, and a
    padding bug would go unseen."""
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in loaded.model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, std)
    return loaded


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Callable[[], LoadedModel]]]:
    root = tmp_path_factory.mktemp("invariance")
    minilm = materialize_candidate("minilm-l3", root / "minilm-l3")
    head = tiny_classifier(root / "head")
    llama = tiny_llama(root / "llama")

    def int8(loaded: LoadedModel) -> LoadedModel:
        quantize_int8(loaded.model)  # encoders: fbgemm's int8 linear, activations quantized per token
        return loaded

    zero_shot, text_classification = tasks.get("zero-shot-classification"), tasks.get("text-classification")
    yield {
        "minilm": lambda: zero_shot.runtime().load(minilm, CPU),
        "minilm-int8": lambda: int8(zero_shot.runtime().load(minilm, CPU)),
        "head": lambda: text_classification.runtime().load(head, CPU),
        "head-int8": lambda: int8(text_classification.runtime().load(head, CPU)),
        "llama": lambda: spread(tasks.get("generation").runtime().load(llama, CPU)),
    }


def check_classification(task: ClassificationTask, loaded: LoadedModel, spec: TaskSpec, rows: list[Example]) -> None:
    texts = [r.text for r in rows]
    seen = {}
    for n in SIZES:
        sized = at_batch(task, n)
        assert isinstance(sized, ClassificationTask)
        with torch.inference_mode():
            scores = torch.cat([sized.runtime().label_scores(loaded, spec, texts[i: i + n])  # type: ignore[attr-defined]
                                for i in range(0, len(texts), n)])
        m = sized.runtime().evaluate(loaded, spec, rows, "accuracy", HARDWARE)
        seen[n] = (sized.runtime().predict(loaded, spec, texts), scores.float().cpu(), m.score, m.extra)
    (labels1, scores1, score1, extra1), (labels8, scores8, score8, extra8) = seen[1], seen[8]
    assert labels1 == labels8
    assert (scores1 - scores8).abs().max() < SCORE_ATOL
    assert score1 == score8 and extra1 == extra8


def test_zero_shot_classification(models: dict[str, Callable[[], LoadedModel]]) -> None:
    labels = example_script(EXAMPLE_DIR / "make_data.py").LABELS
    spec = TaskSpec(type="zero-shot-classification", labels=labels)
    rows = load_jsonl(EXAMPLE_DIR / "eval.jsonl", Example)[:16]
    assert len({len(r.text) for r in rows}) > 8, "texts of different lengths: batches are padded"
    task = tasks.get("zero-shot-classification")
    assert isinstance(task, ClassificationTask)
    for variant in ("minilm", "minilm-int8"):
        check_classification(task, models[variant](), spec, rows)


def test_text_classification(models: dict[str, Callable[[], LoadedModel]]) -> None:
    texts = ["the site is down", "a small glitch in the login page again today", "nice", "is it a bug or not",
             "the whole thing is down for everyone since the update this morning", "low", "a b c", "the end"]
    names = list(HEAD_LABELS)
    rows = [Example(id=f"eval-{i}", text=t, label=names[i % 3]) for i, t in enumerate(texts * 2)]
    task = tasks.get("text-classification")
    assert isinstance(task, ClassificationTask)
    for variant in ("head", "head-int8"):
        check_classification(task, models[variant](), HEAD_SPEC, rows)


def test_generation(models: dict[str, Callable[[], LoadedModel]]) -> None:
    """Left padding with the attention mask: a prompt's greedy answer is the same alone or in a batch."""
    spec = TaskSpec(type="generation", prompt="Question: {input}\nAnswer:", max_new_tokens=6)
    rows = [GenerationRow(id=f"eval-{i}", input=f"what is {i} plus {'one ' * (i % 5)}", target=str(i))
            for i in range(12)]
    loaded, task = models["llama"](), tasks.get("generation")
    answers = {n: at_batch(task, n).runtime().predict(loaded, spec, [r.input for r in rows]) for n in SIZES}
    assert len(set(answers[1])) > 3, f"the answers differ from prompt to prompt: {answers[1]}"
    assert answers[1] == answers[8]
    measured = {n: at_batch(task, n).runtime().evaluate(loaded, spec, rows, "chrf", HARDWARE) for n in SIZES}
    assert measured[1].score == measured[8].score
    assert {k: v for k, v in measured[1].extra.items() if k in ("exact_match", "contains", "chrf")} == {
        k: v for k, v in measured[8].extra.items() if k in ("exact_match", "contains", "chrf")}


def test_multiple_choice(models: dict[str, Callable[[], LoadedModel]]) -> None:
    """Right padding with the attention mask: a choice's log-likelihood is the same in any batch."""
    spec = TaskSpec(type="multiple-choice", prompt="{input}")
    rows = [ChoiceRow(id=f"eval-{i}", input="Is fire hot? " * (1 + i % 3), label=i % 3,
                      choices=["yes", "no", "it depends on " + "the fire " * (i % 4)]) for i in range(10)]
    loaded, task = models["llama"](), tasks.get("multiple-choice")
    picked = {n: at_batch(task, n).runtime().choose(loaded, spec, rows) for n in SIZES}  # type: ignore[attr-defined]
    assert len(set(picked[1])) > 1, f"the picks differ from row to row: {picked[1]}"
    assert picked[1] == picked[8]
    prompts = [p for r in rows for p in [f"{r.input}"] * len(r.choices)]
    continuations = [f" {c}" for r in rows for c in r.choices]
    with torch.inference_mode():
        sums = {n: torch.cat([task.runtime().continuation_logprobs(  # type: ignore[attr-defined]
            loaded, prompts[i: i + n], continuations[i: i + n])[0] for i in range(0, len(prompts), n)]) for n in SIZES}
    assert (sums[1] - sums[8]).abs().max() < SCORE_ATOL * 10
    assert at_batch(task, 1).runtime().evaluate(loaded, spec, rows, "accuracy", HARDWARE).score == at_batch(
        task, 8).runtime().evaluate(loaded, spec, rows, "accuracy", HARDWARE).score


def test_every_builtin_task_type_is_checked_here() -> None:
    """A new built-in task type needs its case in this module."""
    builtin = {name for name in tasks.names() if type(tasks.get(name)).__module__ in BUILTIN_MODULES}
    assert builtin == {"zero-shot-classification", "text-classification", "generation", "multiple-choice"}
