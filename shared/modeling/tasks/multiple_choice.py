"""`multiple-choice`: a causal LM picks the choice it finds most likely after the prompt.

Rows are `{"id", "input", "choices": [...], "label": i}`. Each choice is scored by the log-likelihood of
its tokens after the prompt; with `task.length_normalise` (the default) by the mean per token, so long
choices are not penalised for their length. Metric: accuracy.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field, model_validator

from weightflow.contracts.limits import MAX_TEXT_CHARS
from weightflow.contracts.requirements import TaskSpec
from weightflow.shared.modeling.protocols import TaskRuntime
from weightflow.shared.modeling.registry import tasks
from weightflow.shared.modeling.tasks.language import MAX_PROMPT_TOKENS, LanguageTask, _Row

LATENCY_SAMPLES = 8


class ChoiceRow(_Row):
    id: str = Field(min_length=1, max_length=200)
    input: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    choices: list[str] = Field(min_length=2, max_length=10)
    label: int

    @model_validator(mode="after")
    def _label_in_range(self) -> ChoiceRow:
        if not 0 <= self.label < len(self.choices):
            raise ValueError(f"label {self.label} is not an index of the {len(self.choices)} choices")
        return self


class MultipleChoice(LanguageTask):
    name: ClassVar[str] = "multiple-choice"
    metrics: ClassVar[tuple[str, ...]] = ("accuracy",)
    row: ClassVar[type[BaseModel]] = ChoiceRow
    batch_size: ClassVar[int] = 16  # (prompt, choice) pairs per forward pass, of one row or several
    runtime_class: ClassVar[type[TaskRuntime] | str] = ".multiple_choice_runtime:MultipleChoiceRuntime"

    def serving_context(self, spec: TaskSpec) -> int:
        return MAX_PROMPT_TOKENS  # prompt and choice, scored in one forward pass; nothing is generated






tasks.register(MultipleChoice.name, MultipleChoice())
