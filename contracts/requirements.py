"""Stage 1: the requirements document and the events that submit, accept or reject it.

`Requirements` is the one-page requirements doc as data. It travels inside later events so every
stage judges candidates against the same, versioned statement of what the team needs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from contracts.base import Contract, Event, register

DATA_SPLITS = ("eval", "canary", "train", "general")


class TaskSpec(Contract):
    type: Literal["zero-shot-classification"] = "zero-shot-classification"
    labels: dict[str, str] = Field(description="label -> natural-language description used as its prototype")

    @field_validator("labels")
    @classmethod
    def _two_labels(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) < 2:
            raise ValueError("a classification task needs at least two labels")
        for label, description in v.items():
            if not label.strip() or not description.strip():
                raise ValueError(f"label {label!r} needs a non-empty name and description")
        return v


class DataFiles(Contract):
    """Paths as written in the YAML (relative to it); the CLI uploads them and sends digests."""

    eval: str
    canary: str
    train: str | None = None
    general: str | None = None


class QualitySpec(Contract):
    metric: Literal["accuracy"] = "accuracy"
    threshold: float = Field(ge=0.0, le=1.0)
    tunable_gap: float = Field(default=0.05, ge=0.0, le=1.0, description="largest gap LoRA tuning may try to close")
    max_general_drop: float = Field(default=0.02, ge=0.0, le=1.0, description="allowed loss on the general set")


class LatencySpec(Contract):
    p95_ms: float = Field(gt=0)


class CostSpec(Contract):
    per_1k_tasks_usd: float = Field(gt=0)


class HardwareProfile(Contract):
    profile: str
    device: Literal["cpu", "cuda"] = "cpu"
    memory_mb: float = Field(gt=0)
    cost_per_hour_usd: float = Field(ge=0)


class DeploymentSpec(Contract):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    mode: Literal["self-hosted", "api"] = "self-hosted"
    hardware: HardwareProfile
    data_residency: str | None = None

    @model_validator(mode="after")
    def _self_hosted_only(self) -> DeploymentSpec:
        if self.mode == "api":
            raise ValueError(
                "mode 'api' needs API candidates, and none are configured in this release; use 'self-hosted'"
            )
        return self


class QuantizationSpec(Contract):
    allowed: list[Literal["int8"]] = Field(default_factory=lambda: list[Literal["int8"]](["int8"]))
    force: Literal["int8"] | None = Field(default=None, description="quantize even if fp32 fits")


class MonitoringSpec(Contract):
    canary_interval_s: float = Field(default=300.0, gt=0)
    quality_drop: float = Field(default=0.05, ge=0,
                                description="alert when canary score falls this far below registration")
    latency_increase_pct: float = Field(default=50.0, ge=0)
    cost_increase_pct: float = Field(default=50.0, ge=0)


class Requirements(Contract):
    name: str
    task: TaskSpec
    data: DataFiles
    quality: QualitySpec
    latency: LatencySpec
    cost: CostSpec
    deployment: DeploymentSpec
    candidates: list[str] | None = Field(default=None, description="model names; default: every known candidate")
    quantization: QuantizationSpec = Field(default_factory=QuantizationSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)


class DataRefs(Contract):
    """sha256 digests of the data files in the artifact store."""

    eval: str
    canary: str
    train: str | None = None
    general: str | None = None


class RunContext(Contract):
    """What every downstream stage needs to judge its work; carried forward from acceptance."""

    requirements: Requirements
    version: int
    data: DataRefs
    requirements_digest: str


@register
class RequirementsSubmitted(Event):
    STAGE = "requirements"
    NAME = "submitted"
    document: str = Field(description="the YAML text as written by the team")
    data: dict[str, str] = Field(default_factory=dict, description="split name -> artifact digest")
    source: str = ""


@register
class RequirementsChanged(Event):
    STAGE = "requirements"
    NAME = "changed"
    deployment: str
    document: str
    data: dict[str, str] = Field(default_factory=dict)
    source: str = ""


@register
class RequirementsAccepted(Event):
    STAGE = "requirements"
    NAME = "accepted"
    context: RunContext
    markdown_digest: str


@register
class RequirementsRejected(Event):
    STAGE = "requirements"
    NAME = "rejected"
    errors: list[str]
