"""What the causal-LM tasks share, torch-free: the general rows (perplexity text or multiple choice), prompt
rendering, checks, the serving context, and the general score's statistics. The model work (loading with the
right padding, log-likelihoods, the loss on target tokens only, generation) is `language_runtime`'s.

General score for language models is −ln(perplexity) on the general text (or accuracy on a general
multiple-choice set): higher is better, so `quality.max_general_drop` bounds how much the adapter may
raise log-perplexity (0.05 ≈ perplexity ×1.05).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from weightflow.contracts.limits import MAX_TEXT_CHARS
from weightflow.contracts.requirements import TaskSpec
from weightflow.shared.modeling.checkpoint import CheckpointInfo
from weightflow.shared.modeling.protocols import Task

MAX_PROMPT_TOKENS = 256
GREEDY_BELOW = 1e-5  # a sampling temperature under this decodes greedily (as vLLM does)


class _Row(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


class GeneralRow(_Row):
    """A line of general text (perplexity), or a multiple-choice question (accuracy)."""

    id: str = Field(min_length=1, max_length=200)
    text: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT_CHARS)
    input: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT_CHARS)
    choices: list[str] | None = Field(default=None, min_length=2, max_length=10)
    label: int | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> GeneralRow:
        if self.text is None and (self.input is None or self.choices is None or self.label is None):
            raise ValueError("a general row is {id, text} (perplexity) or {id, input, choices, label} (accuracy)")
        if self.choices is not None and self.label is not None and not 0 <= self.label < len(self.choices):
            raise ValueError(f"label {self.label} is not an index of the {len(self.choices)} choices")
        return self


class LanguageTask(Task):
    general_row: ClassVar[type[BaseModel]] = GeneralRow
    general_metric: ClassVar[str] = "-ln(perplexity) or accuracy"
    batch_size: ClassVar[int] = 8

    def check_spec(self, spec: TaskSpec, metric: str) -> list[str]:
        errors = super().check_spec(spec, metric)
        if spec.prompt is not None and "{input}" not in spec.prompt:
            errors.append("task.prompt: the template must contain {input}, where each row's input goes")
        return errors

    def check_checkpoint(self, spec: TaskSpec, info: CheckpointInfo) -> list[str]:
        if not any(a.endswith("ForCausalLM") for a in info.architectures):
            return [f"{info.directory.name}: {info.architectures or 'its config'} is not a causal language model "
                    f"(…ForCausalLM), which task {self.name} generates with"]
        return []

    def serving_context(self, spec: TaskSpec) -> int:
        return MAX_PROMPT_TOKENS + spec.max_new_tokens

    serves: ClassVar[frozenset[str]] = frozenset({"completions"})

    def calibration_texts(self, spec: TaskSpec, rows: Sequence[Any]) -> list[str]:
        """Prompt and answer as one text (the chat template needs a tokenizer: the plain template is used)."""
        template = spec.prompt or "{input}"
        out = []
        for r in rows:
            answer = (r.all_targets[0] if hasattr(r, "all_targets") else
                      r.choices[r.label] if getattr(r, "choices", None) else "")
            out.append(f"{template.replace('{input}', str(getattr(r, 'input', '') or getattr(r, 'text', '')))} "
                       f"{answer}".strip())
        return out


def mean_of_rows(values: Any) -> float:
    return float(values.mean()) if len(values) else 0.0


def per_token_likelihood(values: Any) -> float:
    """Mean log-likelihood per token over the texts = −ln(perplexity); −inf with no token at all."""
    tokens = float(values[:, 1].sum())
    return float(values[:, 0].sum()) / tokens if tokens else -math.inf


def render_prompt(spec: TaskSpec, text: str) -> str:
    """`task.prompt` with the input in it, before any chat template: what an API is sent as well."""
    return (spec.prompt or "{input}").replace("{input}", text)


def first_line(text: str) -> str:
    """A generated answer: the text up to its first line break, trimmed."""
    return text.strip().split("\n")[0].strip()
