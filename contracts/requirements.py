"""Stage 1: the requirements document and the events that submit, accept or reject it.

`Requirements` is the one-page requirements doc as data. It travels inside later events so every
stage judges candidates against the same, versioned statement of what the team needs. What a task
type, candidate source or quantization scheme *means* is defined by the model layer's registries;
here they are names, checked against those registries when a document is validated.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    BeforeValidator,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from weightflow.contracts.base import Contract, Event, register

DATA_SPLITS = ("eval", "canary", "train", "general")
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


def _relative_path(value: str, what: str) -> str:
    """A path inside the requirements file's folder: relative, no '..', no backslashes or NULs."""
    if not value or "\x00" in value or "\\" in value:
        raise ValueError(f"{what} {value!r} is not a usable path")
    path = PurePosixPath(value)
    if path.is_absolute() or value.startswith("~"):
        raise ValueError(f"{what} {value!r} is absolute; give a path relative to the requirements file")
    if ".." in path.parts:
        raise ValueError(f"{what} {value!r} leaves the requirements file's folder ('..'); move the file inside it")
    return value


class TaskSpec(Contract):
    """What the model must do. Which fields a task type needs is checked by that task (model layer)."""

    type: str = Field(default="zero-shot-classification",
                      description="a registered task: zero-shot-classification, text-classification, …")
    labels: dict[str, str] | None = Field(
        default=None, description="classification: label -> natural-language description")
    label_map: dict[str, str] | None = Field(
        default=None, description="text-classification: the checkpoint's label -> the task's label")
    prompt: str | None = Field(default=None, description=(
        "language-model tasks: a template with {input}; classification asked of a chat API: {labels} and {input}"))
    chat_template: bool = Field(default=False, description="wrap the prompt with the tokenizer's chat template")
    max_new_tokens: int = Field(default=32, ge=1, le=1024)
    length_normalise: bool = Field(default=True, description="multiple-choice: mean log-likelihood per token")

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        if len(v) < 2:
            raise ValueError("a classification task needs at least two labels")
        for label, description in v.items():
            if not str(label).strip() or not str(description).strip():
                raise ValueError(f"label {label!r} needs a non-empty name and description")
        return v


class DataFiles(Contract):
    """Paths as written in the YAML, relative to it and inside its folder; the CLI uploads them."""

    eval: str
    canary: str
    train: str | None = None
    general: str | None = None

    @field_validator("eval", "canary", "train", "general")
    @classmethod
    def _inside(cls, v: str | None) -> str | None:
        return None if v is None else _relative_path(v, "data path")


class QualitySpec(Contract):
    metric: str = Field(default="accuracy", description="a metric the task knows (accuracy, macro_f1, …)")
    threshold: float = Field(ge=0.0, le=1.0)
    tunable_gap: float = Field(default=0.05, ge=0.0, le=1.0, description="largest gap LoRA tuning may try to close")
    max_general_drop: float = Field(default=0.02, ge=0.0, le=1.0, description="allowed loss on the general set")
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0, description=(
        "of the eval score's interval, at every gate (selection, variant re-benchmarks, the tuning gate) and in "
        "paired comparisons; the canary uses monitoring.confidence"))
    decide_on: Literal["estimate", "lower_bound"] = Field(default="estimate", description=(
        "what an inconclusive score (its interval straddles the threshold) does: 'estimate' passes it when the "
        "score itself clears the threshold; 'lower_bound' only when the whole interval does (a strict bar)"))


class LatencySpec(Contract):
    p95_ms: float = Field(gt=0)


class CostSpec(Contract):
    per_1k_tasks_usd: float = Field(gt=0)


class HardwareProfile(Contract):
    profile: str
    device: Literal["cpu", "cuda"] = "cpu"
    memory_mb: float = Field(gt=0)
    cost_per_hour_usd: float = Field(ge=0)
    runtime_mb: float | None = Field(default=None, ge=0, description=(
        "memory the serving process takes beyond weights and activations (tokenizer, allocator, runtime buffers); "
        "unset: calibrated for the device and the model (on CPU 18 MB plus about 9x the tokenizer.json, "
        "bench/RESULTS.md §15). An unset value is left out of the JSON, so an earlier release reads its own "
        "default (64)"))

    @model_serializer(mode="wrap")
    def _leave_out_unset_runtime(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("runtime_mb", 0) is None:
            del data["runtime_mb"]
        return data


# The machine that calls a hosted API: it hosts no model, so it costs nothing per hour and needs no memory
# budget. Used when an API deployment names no hardware (a local candidate beside API ones needs it).
API_CLIENT = {"profile": "api-client", "device": "cpu", "memory_mb": 1024, "cost_per_hour_usd": 0.0, "runtime_mb": 0}


class DeploymentSpec(Contract):
    name: str = Field(pattern=NAME_PATTERN)
    mode: Literal["self-hosted", "api"] = Field(default="self-hosted", description=(
        "self-hosted: every candidate runs on your hardware; api: hosted API candidates may be chosen too"))
    hardware: HardwareProfile
    data_residency: str | None = Field(default=None, description="API candidates must declare this region")
    promotion: Literal["automatic", "manual"] = Field(default="automatic", description=(
        "automatic: a registered release whose baseline passes the canary goes live; manual: it waits for "
        "`weightflow approve` (PromotionAwaitingApproval carries the evidence)"))

    @model_validator(mode="before")
    @classmethod
    def _api_client_hardware(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("mode") == "api" and data.get("hardware") is None:
            return {**data, "hardware": API_CLIENT}
        return data


def _candidate_shorthand(value: Any) -> Any:
    return {"builtin": value} if isinstance(value, str) else value


class ApiEndpoint(Contract):
    """A hosted model behind an OpenAI-compatible HTTP API. The key is read from `api_key_env` by the
    services that call it; its value never enters an event, a manifest, a log or a trace."""

    base_url: str = Field(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$", max_length=500,
                          description="up to and including /v1, e.g. https://api.example.com/v1")
    model: str = Field(min_length=1, max_length=200, description="the model id the API expects")
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,99}$",
                                    description="environment variable holding the bearer token")
    price_per_1k_input_tokens: float = Field(ge=0, description="USD")
    price_per_1k_output_tokens: float = Field(ge=0, description="USD")
    route: Literal["chat", "completions", "embeddings", "classify"] | None = Field(
        default=None, description="which endpoint the task calls (default: the task's first)")
    max_concurrency: int = Field(default=4, ge=1, le=64)
    timeout_s: float = Field(default=30.0, gt=0, le=600, description=(
        "seconds for one try, whole: connecting, waiting and reading the body (at most 4 MiB); one evaluation "
        "gets timeout_s x (max_retries + 1) x ceil(rows / max_concurrency) in all, backoffs included"))
    max_retries: int = Field(default=4, ge=0, le=10, description="on 429, 5xx and connection errors, with backoff")
    size_class: Literal["xs", "s", "m", "l", "xl", "api"] = Field(
        default="api", description="where selection tries it; 'api' comes after every local size class")
    region: str | None = Field(default=None, description="where the API processes data (for data_residency)")

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/")


class CandidateRef(Contract):
    """One candidate model: a built-in name, a model directory next to the YAML, a local-cache id, or a
    hosted API."""

    builtin: str | None = Field(default=None, description="a model weightflow ships (e.g. minilm-l6)")
    path: str | None = Field(default=None, description="a Hugging Face model directory, relative to the YAML")
    hf: str | None = Field(default=None, description="org/name in the local Hugging Face cache (never downloaded)")
    api: ApiEndpoint | None = Field(default=None, description="an OpenAI-compatible endpoint")
    name: str | None = Field(default=None, pattern=NAME_PATTERN, description="display name (default: derived)")

    @model_validator(mode="after")
    def _exactly_one(self) -> CandidateRef:
        given = [k for k in ("builtin", "path", "hf", "api") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("a candidate is a built-in name, or exactly one of path:, hf: or api:")
        if self.path is not None:
            _relative_path(self.path, "candidate path")
        if self.hf is not None and (self.hf.count("/") != 1 or any(not p or p in (".", "..") for p in
                                                                    self.hf.split("/"))):
            raise ValueError(f"hf: {self.hf!r} is not an org/name model id")
        return self

    @property
    def source(self) -> str:
        return "builtin" if self.builtin else "path" if self.path else "hf" if self.hf else "api"

    @property
    def key(self) -> str:
        """How the candidate is named in events and reports."""
        if self.name:
            return self.name
        if self.builtin:
            return self.builtin
        if self.path:
            return PurePosixPath(self.path).name or self.path
        if self.api:
            slug = re.sub(r"[^a-z0-9]+", "-", self.api.model.lower()).strip("-")[:58]
            return f"api-{slug or 'model'}"
        assert self.hf is not None
        return self.hf.replace("/", "--")


Candidate = Annotated[CandidateRef, BeforeValidator(_candidate_shorthand)]


class QuantizationSpec(Contract):
    allowed: list[str] = Field(default_factory=lambda: ["int8"], description="registered schemes to try")
    force: str | None = Field(default=None, description="quantize with this scheme even if the unquantized fits")
    max_quality_loss: float | None = Field(default=None, ge=0.0, le=1.0, description=(
        "the most a variant may lose against the model it was made from, on the same eval rows (a paired "
        "comparison; its far bound under quality.decide_on: lower_bound); a variant that loses more is given up "
        "for the next scheme even when it clears the threshold. None: the threshold alone decides"))


class MonitoringSpec(Contract):
    canary_interval_s: float = Field(default=300.0, gt=0)
    quality_drop: float = Field(default=0.05, ge=0,
                                description="allowed fall of the canary score below its registration baseline")
    latency_increase_pct: float = Field(default=50.0, ge=0)
    cost_increase_pct: float = Field(default=50.0, ge=0)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0, description="of the canary score's interval")
    min_canary_rows: int = Field(default=100, ge=1, description="smaller canary sets get a warning at submit")
    max_reroutes: int = Field(default=3, ge=0, description="automatic reroutes per requirements version")


class Requirements(Contract):
    name: str
    task: TaskSpec
    data: DataFiles
    quality: QualitySpec
    latency: LatencySpec
    cost: CostSpec
    deployment: DeploymentSpec
    candidates: list[Candidate] | None = Field(default=None, description="default: every built-in candidate")
    quantization: QuantizationSpec = Field(default_factory=QuantizationSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)

    @model_validator(mode="after")
    def _unique_candidates(self) -> Requirements:
        keys = [c.key for c in self.candidates or []]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"candidates {dupes} appear twice; give one of them a distinct name:")
        return self

    @model_validator(mode="before")
    @classmethod
    def _local_candidates_need_hardware(cls, data: Any) -> Any:
        dep = data.get("deployment") if isinstance(data, dict) else None
        if isinstance(dep, dict) and dep.get("mode") == "api" and dep.get("hardware") is None:
            candidates = data.get("candidates")
            if not isinstance(candidates, list) or any(not (isinstance(c, dict) and c.get("api"))
                                                       for c in candidates):
                raise ValueError("deployment.hardware is missing: local candidates (and the default, every "
                                 "built-in) need the hardware they would run on; give deployment.hardware, or "
                                 "list only api: candidates")
        return data

    @model_validator(mode="after")
    def _deployment_allows_candidates(self) -> Requirements:
        dep = self.deployment
        remote = [c for c in self.candidates or [] if c.api is not None]
        if dep.mode == "self-hosted" and remote:
            raise ValueError(f"candidates {[c.key for c in remote]} call a hosted API, and deployment.mode is "
                             "'self-hosted' (every request stays on your hardware); set deployment.mode: api to "
                             "allow API candidates")
        if dep.data_residency:
            for c in remote:
                assert c.api is not None
                if c.api.region != dep.data_residency:
                    raise ValueError(
                        f"candidate {c.key}: deployment.data_residency is {dep.data_residency!r} but its API "
                        f"declares region {c.api.region!r}; set api.region to where the API processes data, or "
                        "drop the candidate")
        return self

    def candidate(self, key: str) -> CandidateRef | None:
        return next((c for c in self.candidates or [] if c.key == key), None)


class DataRefs(Contract):
    """sha256 digests of the data files in the artifact store."""

    eval: str
    canary: str
    train: str | None = None
    general: str | None = None


class ResolvedCandidate(Contract):
    """A candidate as the workflow knows it: where its checkpoint is and how big it is."""

    key: str
    source: str
    reference: str = Field(description="the name, path or id as written in the requirements")
    tree_digest: str | None = Field(default=None, description="artifact-store tree; None: the source builds it")
    params: int
    size_class: str
    architecture: str = ""


class Exclusion(Contract):
    """A combination that failed its canary under this requirements version: not selected again."""

    manifest_id: str
    candidate: str
    variant: str
    adapter_digest: str | None = None
    kind: str = Field(description="what failed: quality, latency, cost or integrity")
    reasons: list[str]
    canary_gap: float = Field(default=0.0, description="threshold minus the canary score, when positive")


class RunContext(Contract):
    """What every downstream stage needs to judge its work; carried forward from acceptance."""

    requirements: Requirements
    version: int
    data: DataRefs
    requirements_digest: str
    candidates: list[ResolvedCandidate] = Field(default_factory=list)
    attempt: int = Field(default=0, description="0 for a submitted run, n for the n-th automatic reroute")
    exclusions: list[Exclusion] = Field(default_factory=list)

    def excluded(self, candidate: str, variant: str | None = None, adapter: bool | None = None) -> bool:
        """Did this candidate (this variant, with or without an adapter) fail a canary?"""
        for e in self.exclusions:
            if e.candidate != candidate or (variant is not None and e.variant != variant):
                continue
            if adapter is None or (e.adapter_digest is not None) == adapter:
                return True
        return False


@register
class RequirementsSubmitted(Event):
    STAGE = "requirements"
    NAME = "submitted"
    SCHEMA_VERSION = 2
    document: str = Field(description="the YAML text as written by the team")
    data: dict[str, str] = Field(default_factory=dict, description="split name -> artifact digest")
    candidates: list[ResolvedCandidate] = Field(default_factory=list,
                                                description="path:/hf: candidates the CLI stored")
    source: str = ""


@register
class RequirementsChanged(Event):
    STAGE = "requirements"
    NAME = "changed"
    SCHEMA_VERSION = 2
    deployment: str
    document: str
    data: dict[str, str] = Field(default_factory=dict)
    candidates: list[ResolvedCandidate] = Field(default_factory=list)
    source: str = ""


@register
class RequirementsAccepted(Event):
    STAGE = "requirements"
    NAME = "accepted"
    SCHEMA_VERSION = 3
    context: RunContext
    markdown_digest: str
    warnings: list[str] = Field(default_factory=list)
    reroute_of: UUID | None = Field(default=None, description="the run this one re-enters stage 2 for")

    def run_registration(self) -> Contract:
        """Accepting a run registers it, with the requirements it was accepted with."""
        from weightflow.contracts.workflow import RunRecord  # workflow imports this module

        c = self.context
        return RunRecord(run_id=self.run_id, deployment=c.requirements.deployment.name, version=c.version,
                         requirements_digest=c.requirements_digest, attempt=c.attempt)


@register
class RequirementsRejected(Event):
    STAGE = "requirements"
    NAME = "rejected"
    errors: list[str]
