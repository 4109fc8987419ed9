"""Language-model tasks on a tiny causal LM made by code (tests/lm_fixtures.py): generation and
multiple choice, text metrics, perplexity, LoRA with the loss on target tokens only, the KV-cache budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from weightflow.contracts.requirements import HardwareProfile, TaskSpec
from weightflow.shared.modeling.budget import Architecture, kv_cache_bytes
from weightflow.shared.modeling.checkpoint import inspect_checkpoint
from weightflow.shared.modeling.protocols import LoadedModel
from weightflow.shared.modeling.registry import sources, tasks
from weightflow.shared.modeling.tasks import text_metrics
from weightflow.shared.modeling.tasks.generation import GenerationRow
from weightflow.shared.modeling.tasks.language import GeneralRow
from weightflow.shared.modeling.tasks.language_runtime import LanguageRuntime, keeps_logits
from weightflow.shared.modeling.tasks.multiple_choice import ChoiceRow
from weightflow.shared.modeling.tuners.lora import LoraSettings
from weightflow.shared.modeling.tuners.lora_training import attach, train_lora

from ..lm_fixtures import tiny_llama

GENERATION = tasks.get("generation")
MULTIPLE_CHOICE = tasks.get("multiple-choice")
HARDWARE = HardwareProfile(profile="t", memory_mb=100, cost_per_hour_usd=0.5)
SPEC = TaskSpec(type="generation", prompt="Question: {input}\nAnswer:", max_new_tokens=6)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("lm") / "tiny")


@pytest.fixture(scope="module")
def lm(lm_dir: Path) -> LoadedModel:
    return GENERATION.runtime().load(lm_dir, CPU)


def rows(n: int = 6) -> list[GenerationRow]:
    return [GenerationRow(id=f"eval-{i}", input=f"what is {i} plus {i}", target=str(2 * i)) for i in range(n)]


def test_text_metrics_normalise_like_squad() -> None:
    assert text_metrics.normalise("  The Paris. ") == "paris"
    assert text_metrics.exact_match("The Paris!", ["paris"]) == 1.0
    assert text_metrics.exact_match("Paris, France", ["paris"]) == 0.0
    assert text_metrics.contains("It is Paris, France", ["paris"]) == 1.0
    assert text_metrics.contains("Parisian", ["paris"]) == 0.0, "whole words only"
    assert text_metrics.regex("order #12345 shipped", [r"#\d{5}\b"]) == 1.0
    assert text_metrics.chrf("Paris", ["Paris"]) == 1.0 and 0 < text_metrics.chrf("Pari", ["Paris"]) < 1
    assert text_metrics.exact_match("b", ["a", "b"]) == 1.0, "any target"
    assert text_metrics.check_patterns(["(unclosed"]) is not None


def test_rows_and_specs_are_checked() -> None:
    with pytest.raises(ValueError, match="target"):
        GenerationRow(id="x", input="q")
    with pytest.raises(ValueError, match="label 3"):
        ChoiceRow(id="x", input="q", choices=["a", "b"], label=3)
    with pytest.raises(ValueError, match="general row"):
        GeneralRow(id="x")
    assert GENERATION.check_spec(TaskSpec(type="generation", prompt="no slot"), "exact_match")
    assert GENERATION.check_spec(SPEC, "accuracy"), "accuracy is not a generation metric"
    regex_rows = [GenerationRow(id="r", input="q", target="(unclosed")]
    assert GENERATION.check_rows(SPEC, "regex", "eval", regex_rows)
    assert not GENERATION.check_rows(SPEC, "exact_match", "eval", regex_rows)


def test_the_task_fits_the_checkpoint(lm_dir: Path) -> None:
    info = inspect_checkpoint(lm_dir)
    assert info.is_decoder and GENERATION.check_checkpoint(SPEC, info) == []
    assert "decoder" in tasks.get("zero-shot-classification").check_checkpoint(SPEC, info)[0]
    from weightflow.contracts.requirements import CandidateRef

    encoder = inspect_checkpoint(sources.get("builtin").local_dir(CandidateRef(builtin="minilm-l3"), None))
    assert "not a causal language model" in GENERATION.check_checkpoint(SPEC, encoder)[0]


def test_generation_measures_quality_latency_first_token_and_throughput(lm: LoadedModel) -> None:
    for metric in ("exact_match", "contains", "chrf"):
        m = GENERATION.runtime().evaluate(lm, SPEC, rows(), metric, HARDWARE)
        assert m.n == 6 and m.metric == metric and 0 <= m.score <= 1 and m.interval is not None
        assert m.binary == (metric != "chrf")
        assert m.extra["tokens_per_s"] > 0 and 0 < m.extra["ttft_ms_p50"] <= m.latency_ms_p95
        assert 0 < m.extra["tokens_per_task"] <= SPEC.max_new_tokens and m.cost_per_1k_usd > 0
        samples = m.sample_rows
        assert samples is not None and [(s.id, s.input, s.target) for s in samples] == [
            (r.id, r.input, r.target) for r in rows()]
        assert sum(s.score for s in samples) / 6 == pytest.approx(m.score), "each row's own score on the metric"
        assert all("\n" not in s.prediction for s in samples) and samples[0].latency_ms is not None
    answers = GENERATION.runtime().predict(lm, SPEC, ["what is 1 plus 1", "what is 2 plus 2"])
    assert len(answers) == 2 and all("\n" not in a for a in answers)
    one_by_one = [GENERATION.runtime().predict(lm, SPEC, [t])[0] for t in ("what is 1 plus 1", "what is 2 plus 2")]
    assert answers == one_by_one, "left padding: a batch answers what single requests answer"


def test_multiple_choice_scores_each_choice_by_likelihood(lm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = MULTIPLE_CHOICE.runtime().load(lm_dir, CPU)
    spec = TaskSpec(type="multiple-choice", prompt="{input}")
    questions = [ChoiceRow(id=f"eval-{i}", input="Is fire hot?", choices=["yes", "no"], label=i % 2)
                 for i in range(4)]
    m = MULTIPLE_CHOICE.runtime().evaluate(loaded, spec, questions, "accuracy", HARDWARE)
    assert m.score == 0.5, "the same question twice each way: one half right whatever it picks"
    samples = m.sample_rows  # the chosen and the right choice as text
    assert samples is not None and [s.id for s in samples] == [q.id for q in questions]
    assert [s.target for s in samples] == ["yes", "no", "yes", "no"] and len({s.prediction for s in samples}) == 1
    assert [s.score for s in samples] == [float(s.prediction == s.target) for s in samples]

    def fixed(self: LanguageRuntime, loaded: LoadedModel, prompts: list[str], continuations: list[str], *,
              grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor([-4.0, -3.0]), torch.tensor([4, 1])  # long likely choice vs short one

    monkeypatch.setattr(LanguageRuntime, "continuation_logprobs", fixed)
    runtime = MULTIPLE_CHOICE.runtime()
    assert isinstance(runtime, LanguageRuntime)
    assert runtime._choose(loaded, spec, "q", ["long", "short"]) == 0  # -1.0 per token beats -3.0
    unnormalised = spec.model_copy(update={"length_normalise": False})
    assert runtime._choose(loaded, unnormalised, "q", ["long", "short"]) == 1  # -3.0 total beats -4.0


def test_general_ability_is_log_perplexity_or_accuracy(lm: LoadedModel) -> None:
    text = [GeneralRow(id=f"g{i}", text="The quick brown fox jumps over the lazy dog.") for i in range(3)]
    score = GENERATION.runtime().general_score(lm, SPEC, text)
    assert -10 < score < 0, "−ln(perplexity) of a random model is about −ln(vocabulary)"
    mc = [GeneralRow(id=f"q{i}", input="Is fire hot?", choices=["yes", "no"], label=i % 2) for i in range(4)]
    assert GENERATION.runtime().general_score(lm, SPEC, mc) == 0.5
    # row by row, for the paired comparison: (log-likelihood, tokens) per text, a 0/1 hit per question
    per_text = GENERATION.runtime().general_outputs(lm, SPEC, text)
    assert per_text.values.shape == (3, 2) and per_text.score == pytest.approx(score)
    assert per_text.score == pytest.approx(per_text.values[:, 0].sum() / per_text.values[:, 1].sum())
    assert sorted(GENERATION.runtime().general_outputs(lm, SPEC, mc).values.tolist()) == [0.0, 0.0, 1.0, 1.0]


def test_the_loss_is_on_target_tokens_only(lm: LoadedModel) -> None:
    prompts = ["Question: what is 2 plus 2\nAnswer:"]
    loss = GENERATION.runtime().target_loss(lm, prompts, [" 4"])  # type: ignore[attr-defined]
    tokenizer = lm.tokenizer
    prompt_ids = tokenizer(prompts[0])["input_ids"]
    target_ids = tokenizer(" 4" + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + target_ids])
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    expected = -logprobs[len(prompt_ids) - 1:].mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-4)


def test_continuation_logprobs_project_only_the_continuation_and_match_the_full_forward(lm: LoadedModel) -> None:
    """Logits for the continuation positions only (what keeps a 4-bit LM's multiple-choice pass small):
    the same numbers as the whole forward, for rows of different lengths in one batch."""
    prompts = ["Is fire hot?", "Question: what is two plus two, written as a word?\nAnswer:"]
    continuations = [" yes", " four or so"]
    assert keeps_logits(lm.model)
    sums, counts = GENERATION.runtime().continuation_logprobs(lm, prompts, continuations)  # type: ignore[attr-defined]
    for i, (prompt, cont) in enumerate(zip(prompts, continuations, strict=True)):
        prompt_ids = lm.tokenizer(prompt)["input_ids"]
        cont_ids = lm.tokenizer(cont, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids + cont_ids])
        with torch.no_grad():
            logits = lm.model(input_ids=ids).logits[0, :-1].float()
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
        assert int(counts[i]) == len(cont_ids)
        assert float(sums[i]) == pytest.approx(float(logprobs[len(prompt_ids) - 1:].sum()), rel=1e-4, abs=1e-4)


def test_lora_on_a_causal_lm_learns_and_serves_what_peft_trained(lm_dir: Path, lm: LoadedModel,
                                                                 tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    train = rows(8)
    report = train_lora(GENERATION, lm, SPEC, train, tmp_path / "adapter", LoraSettings(epochs=8, batch_size=4,
                                                                                       lr=1e-2))
    assert report.settings["target_modules"] == ["q_proj", "v_proj"] and report.loss_last < report.loss_first
    ours = attach(lm, tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(str(lm_dir), local_files_only=True).eval()
    theirs = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    ids = lm.tokenizer(["Question: what is 3 plus 3\nAnswer:"], return_tensors="pt")
    with torch.inference_mode():
        assert torch.allclose(ours.model(**ids).logits, theirs(**ids).logits, atol=1e-4)


def test_the_kv_cache_budget_is_what_generation_holds(lm: LoadedModel) -> None:
    """The formula against the cache transformers actually keeps after a batched generation."""
    arch = Architecture.from_config(lm.model.config.to_dict())
    batch = GENERATION.runtime().encode(  # type: ignore[attr-defined]
        lm, ["hello there", "a longer prompt than that"], side="left")
    with torch.inference_mode():
        out = lm.model.generate(**batch, max_new_tokens=5, do_sample=False, return_dict_in_generate=True,
                                pad_token_id=lm.tokenizer.pad_token_id)
    cache = out.past_key_values
    held = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    seq = batch["input_ids"].shape[1] + 5 - 1  # the last token's keys are not cached
    assert held == kv_cache_bytes(arch, batch=2, seq=seq, bytes_per_value=4)
