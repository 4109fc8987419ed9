"""The model layer's seams. Services call only these; each implementation is one registered module.

* `CandidateSource` turns a candidate reference into a verified checkpoint tree and its size;
* `Task` is a task's torch-free spec: its rows, metrics, validation, prompts and remote routes (and
  measuring an API candidate over HTTP); its `TaskRuntime` loads a checkpoint for it, runs it, scores it,
  measures general capability, the loss an adapter trains on, and what a served model answers;
* `Quantizer` is one scheme: whether it can run here, how to write a quantized checkpoint, how to load
  one when transformers cannot;
* `Tuner` trains an adapter on a frozen base for a task and serves it.

Importing this module imports no torch, nor does importing a built-in task's spec module.
"""

from __future__ import annotations

import importlib
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from weightflow.contracts.measurement import Measurement
from weightflow.contracts.requirements import CandidateRef, HardwareProfile, ResolvedCandidate, TaskSpec
from weightflow.shared.telemetry import traced

if TYPE_CHECKING:
    from weightflow.shared.artifacts import ArtifactStore
    from weightflow.shared.modeling.checkpoint import CheckpointInfo
    from weightflow.shared.modeling.peak import PeakMeasured
    from weightflow.shared.modeling.remote import Endpoint


@dataclass
class LoadedModel:
    """A checkpoint loaded for a task: the module, its tokenizer, where it runs, what it was loaded from."""

    model: Any  # torch.nn.Module (typed loosely so this module stays torch-free)
    tokenizer: Any
    device: Any
    task: str
    model_dir: Path
    cache: dict[Any, Any] = field(default_factory=dict)  # per-model values a task computes once


def _trace(cls: type, kind: str, methods: tuple[str, ...]) -> None:
    """Every implementation's model work gets a span `<kind>.<method>` (see shared.telemetry.traced)."""
    for method in methods:
        if method in vars(cls):
            setattr(cls, method, traced(f"{kind}.{method}")(vars(cls)[method]))


@dataclass(frozen=True)
class GeneralOutputs:
    """A general-capability pass row by row: `values` has one row per general row, and `statistic` turns any
    selection of those rows into the score (a rank correlation or a per-token likelihood is not a mean of rows),
    so a paired comparison can resample the same rows on both models and recompute it."""

    values: Any  # numpy array, first axis = general rows
    statistic: Callable[[Any], float]

    @property
    def score(self) -> float:
        return float(self.statistic(self.values))


class NotServed(ValueError):
    """The task's model does not answer this kind of request (e.g. embeddings from a language model)."""


@dataclass(frozen=True)
class CompletionParams:
    """How to decode: what OpenAI-style clients send. Requests with equal params share a batch."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


TextSink = Callable[[int, str], None]


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of sequence or a stop string) or "length"


@dataclass
class Classified:
    label: str
    scores: dict[str, float]  # task label -> probability
    tokens: int


@dataclass
class Embedded:
    vector: list[float]
    tokens: int


class CandidateSource(ABC):
    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _trace(cls, "source", ("tree",))

    # "client": the CLI resolves it (it reads the user's files) and uploads the tree; "service": the
    # benchmark service builds it (a packaged model).
    resolved_by: ClassVar[str] = "client"

    # True: the model runs behind an HTTP API (nothing to load, fit or tune here); see evaluate_remote.
    remote: ClassVar[bool] = False
    # False for checkpoints weightflow ships (their architecture is known good).
    checks_architecture: ClassVar[bool] = True

    def check(self, ref: CandidateRef, base_dir: Path, task: Task, spec: TaskSpec) -> list[str]:
        """What is wrong with the candidate, read before anything is stored (the CLI's check)."""
        from weightflow.shared.modeling.checkpoint import CheckpointError, inspect_checkpoint

        try:
            info = inspect_checkpoint(self.local_dir(ref, base_dir), check_architecture=self.checks_architecture)
        except (CheckpointError, ValueError) as exc:
            return [str(exc)]
        return task.check_checkpoint(spec, info)

    @abstractmethod
    def local_dir(self, ref: CandidateRef, base_dir: Path | None) -> Path:
        """The checkpoint folder on this machine, for checks before anything is stored; ValueError when the
        reference does not lead to one."""

    @abstractmethod
    def resolve(self, ref: CandidateRef, base_dir: Path | None, store: ArtifactStore | None) -> ResolvedCandidate:
        """Check the reference and describe the checkpoint (size from headers, no weights loaded); with a
        store, also put its tree there. Raise ValueError with what to fix."""

    def tree(self, candidate: ResolvedCandidate, store: ArtifactStore) -> str:
        """The stored tree of a resolved candidate (service side)."""
        if candidate.tree_digest is None:
            raise ValueError(f"candidate {candidate.key} was not uploaded; submit it with the weightflow CLI")
        return candidate.tree_digest

    def known(self) -> list[str]:
        """Names this source offers without a path (built-ins); empty for most."""
        return []

    def endpoint(self, store: ArtifactStore, tree_digest: str) -> Endpoint:
        """For a remote source: the endpoint its stored tree pins (the key from the environment)."""
        raise NotImplementedError(f"candidate source {self.name} runs models locally")


class Task(ABC):
    """A task's spec: its rows, metrics, validation, prompts and remote routes. Torch-free by construction
    (tests/unit/test_torch_line.py): the CLI validates, and a service measures an API candidate, without
    importing a model library. The model work is its `runtime()`, imported on first use."""

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        misplaced = sorted(runtime_methods() & set(vars(cls)))
        if misplaced:  # callers reach model work through runtime(): these would silently never run
            raise TypeError(f"task {cls.__qualname__} defines {misplaced} on its spec; model work belongs on a "
                            "TaskRuntime subclass that the task names in runtime_class")
        _trace(cls, "task", ("evaluate_remote",))

    metrics: ClassVar[tuple[str, ...]]  # the first is the default
    row: ClassVar[type[BaseModel]]  # eval, canary and train rows
    general_row: ClassVar[type[BaseModel]]
    general_metric: ClassVar[str]  # higher is better
    # The TaskRuntime that does this task's model work: the class, or "module:Class" imported on first use (a
    # built-in task names its runtime module, so importing the spec imports no torch; ".module" is relative).
    runtime_class: ClassVar[type[TaskRuntime] | str]

    def runtime(self) -> TaskRuntime:
        """This task's model work (load, evaluate, loss, generate, serve), created once."""
        made: TaskRuntime | None = self.__dict__.get("_runtime")
        if made is None:
            cls = getattr(self, "runtime_class", None)
            if cls is None:
                raise TypeError(f"task {self.name} names no runtime_class (the TaskRuntime doing its model work)")
            if isinstance(cls, str):
                # ".x:Y" is module x beside the module of the class that named it (a subclass may live elsewhere)
                module, _, attr = cls.partition(":")
                named_in = next(c for c in type(self).__mro__ if "runtime_class" in vars(c)).__module__
                cls = getattr(importlib.import_module(module, sys.modules[named_in].__package__), attr)
            made = self.__dict__["_runtime"] = cls(self)
        assert made is not None
        return made

    # -- validation ---------------------------------------------------------------------------
    def check_spec(self, spec: TaskSpec, metric: str) -> list[str]:
        if metric not in self.metrics:
            return [f"quality.metric: {metric!r} is not a metric of task {self.name}; use one of {list(self.metrics)}"]
        return []

    def check_rows(self, spec: TaskSpec, metric: str, split: str, rows: Sequence[BaseModel]) -> list[str]:
        return []

    def check_checkpoint(self, spec: TaskSpec, info: CheckpointInfo) -> list[str]:
        return []

    def calibration_texts(self, spec: TaskSpec, rows: Sequence[Any]) -> list[str]:
        """What a calibrating quantizer (AWQ) feeds the model: the rows as the task would present them."""
        return [str(getattr(r, "text", None) or getattr(r, "input", "")) for r in rows]

    def serving_context(self, spec: TaskSpec) -> int:
        """Tokens per request at serving time: the sequence length the memory budget plans for."""
        return 128

    # The kinds of request a deployed model of this task serves: "classify", "embeddings", "completions" (chat
    # included); the runtime answers them.
    serves: ClassVar[frozenset[str]] = frozenset()

    # -- over HTTP (an API candidate, or a canary on `weightflow serve`) -------------------------
    # The OpenAI-compatible routes this task can be measured over; none: only local checkpoints.
    remote_routes: ClassVar[tuple[str, ...]] = ()

    def default_route(self, spec: TaskSpec) -> str:
        return self.remote_routes[0]

    def remote_route(self, spec: TaskSpec, route: str | None) -> str:
        """The route to call; ValueError with what to choose instead."""
        if not self.remote_routes:
            raise ValueError(f"task {self.name} cannot be measured over an HTTP API (it needs the model itself); "
                             "use local candidates for it")
        if route is None:
            return self.default_route(spec)
        if route not in self.remote_routes:
            raise ValueError(f"task {self.name} is measured over {list(self.remote_routes)}, not {route!r}")
        return route

    def prompt_template(self, spec: TaskSpec, route: str) -> str | None:
        """The template a request on `route` is built from (pinned with the deployment), if any."""
        return spec.prompt

    def evaluate_remote(self, endpoint: Endpoint, spec: TaskSpec, rows: Sequence[Any], metric: str,
                        hardware: HardwareProfile, confidence: float = 0.95) -> Measurement:
        """The runtime's `evaluate`, with the model behind `endpoint`: what its clients see (latency per request
        under the endpoint's concurrency, cost from token usage and prices, or from the hardware without them).
        Raises shared.modeling.remote.EndpointError when the endpoint gives no usable answer. On the spec: HTTP
        and metrics only, no model library."""
        raise NotServed(f"task {self.name} cannot be measured over an HTTP API")


def runtime_methods() -> frozenset[str]:
    """What a TaskRuntime does (its public methods); a spec that defines one has put model work on the wrong side."""
    return frozenset(n for n, v in vars(TaskRuntime).items() if not n.startswith("_") and callable(v))


class TaskRuntime(ABC):
    """A task's model work on a loaded checkpoint: load, evaluate, general ability, predict, the tuner's loss,
    peak memory, and what `weightflow serve` answers. `self.task` is its spec (rows, metrics, prompts)."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _trace(cls, "task", ("load", "evaluate", "general_score", "general_outputs", "predict", "classify",
                             "embeddings", "complete"))

    @property
    def name(self) -> str:
        return self.task.name

    @abstractmethod
    def load(self, model_dir: Path, device: Any) -> LoadedModel: ...

    @abstractmethod
    def evaluate(self, loaded: LoadedModel, spec: TaskSpec, rows: Sequence[Any], metric: str,
                 hardware: HardwareProfile, confidence: float = 0.95) -> Measurement:
        """The score on `rows` (with its interval at `confidence`), latency and cost on `hardware`; holding
        its sample log (`Measurement.with_rows`, one SampleRow per row) for the caller to store."""

    @abstractmethod
    def general_score(self, loaded: LoadedModel, spec: TaskSpec, rows: Sequence[Any]) -> float: ...

    def general_outputs(self, loaded: LoadedModel, spec: TaskSpec, rows: Sequence[Any]) -> GeneralOutputs | None:
        """The general pass row by row, for a paired comparison before and after tuning; None (the default, for a
        task that only says its score) leaves the general set compared as two numbers."""
        return None

    def general_pass(self, loaded: LoadedModel, spec: TaskSpec,
                     rows: Sequence[Any]) -> tuple[float, GeneralOutputs | None]:
        """The general score, with its rows when this task gives them. A subclass that overrides `general_score`
        below the class that defines `general_outputs` (a plugin task with its own score) is taken at its word:
        its score, and no rows."""
        mro = type(self).__mro__
        scores_at = next(c for c in mro if "general_score" in c.__dict__)
        outputs_at = next(c for c in mro if "general_outputs" in c.__dict__)
        if issubclass(outputs_at, scores_at):
            outputs = self.general_outputs(loaded, spec, rows)
            if outputs is not None:
                return outputs.score, outputs
        return self.general_score(loaded, spec, rows), None

    @abstractmethod
    def predict(self, loaded: LoadedModel, spec: TaskSpec, inputs: Sequence[str]) -> list[str]: ...

    @abstractmethod
    def training_loss(self, loaded: LoadedModel, spec: TaskSpec, rows: Sequence[Any]) -> Any:
        """A differentiable loss on a batch of train rows (the tuner's objective)."""

    def measure_peak(self, model_dir: Path, spec: TaskSpec, device: str) -> PeakMeasured:
        """Peak memory of this checkpoint at the serving shape, measured in a process of its own (what
        fitting decides on), loaded as serving loads it (under its device map when it holds a placement); a
        seam so a scripted test world can say what its tiny models would take."""
        from weightflow.shared.modeling.peak import measure_peak

        return measure_peak(model_dir, spec, device)

    def lora_targets(self, loaded: LoadedModel) -> tuple[list[str], list[str]]:
        """(target_modules, modules_to_save) for LoRA on this task's model."""
        from weightflow.shared.modeling.loading import attention_projections

        return attention_projections(loaded.model), []

    # -- serving (weightflow serve): what a deployed model of this task answers (Task.serves) ---
    def count_tokens(self, loaded: LoadedModel, text: str) -> int:
        return len(loaded.tokenizer(text, add_special_tokens=True)["input_ids"])

    def classify(self, loaded: LoadedModel, spec: TaskSpec, texts: Sequence[str]) -> list[Classified]:
        raise NotServed(f"task {self.name} does not classify")

    def embeddings(self, loaded: LoadedModel, spec: TaskSpec, texts: Sequence[str]) -> list[Embedded]:
        raise NotServed(f"task {self.name} does not embed text")

    def complete(self, loaded: LoadedModel, spec: TaskSpec, prompts: Sequence[str], params: CompletionParams, *,
                 templated: bool = False, on_text: TextSink | None = None) -> list[Completion]:
        """Continue each prompt as given (`templated`: it was rendered by `chat_prompt` and has its special
        tokens already). `on_text(i, piece)` receives prompt i's text as it is generated (streaming): the
        pieces are always a prefix of the final `Completion.text`, which may hold a last piece more."""
        raise NotServed(f"task {self.name} does not generate text")

    def chat_prompt(self, loaded: LoadedModel, spec: TaskSpec, messages: Sequence[dict[str, str]]
                    ) -> tuple[str, bool]:
        """(prompt, templated) for a chat conversation; ValueError with what to send instead."""
        raise NotServed(f"task {self.name} does not chat")


class Quantizer(ABC):
    scheme: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _trace(cls, "quantizer", ("quantize", "load"))

    bytes_per_param: ClassVar[float]  # nominal, for predicting the budget before quantizing
    expected_quality_loss: ClassVar[float]  # a prior, to order schemes by memory saved vs quality lost

    def unavailable(self, device: str) -> str | None:
        """Why this scheme cannot run on `device` (then fitting records the reason and skips it)."""
        return None

    def predict_weight_bytes(self, params: int, arch: Any) -> int:
        """Weights after quantizing, predicted before it is done (to order and skip schemes). `arch` is a
        shared.modeling.budget.Architecture."""
        return int(params * self.bytes_per_param)

    def working_bytes(self, arch: Any, batch: int, seq: int) -> int:
        """Memory this scheme's layers hold while they compute, beyond the activations every variant holds (a
        block of weights turned to float, say), at `batch` sequences of `seq` tokens. Default: none."""
        return 0

    @abstractmethod
    def quantize(self, task: Task, model_dir: Path, out_dir: Path, spec: TaskSpec, calibration: Sequence[Any],
                 device: Any) -> Path: ...

    def detects(self, model_dir: Path) -> bool:
        """True when `model_dir` holds this scheme's own format (not one transformers loads by itself)."""
        return False

    def load(self, model_dir: Path, auto_class: Any, device: Any) -> Any:
        raise NotImplementedError(f"{self.scheme} checkpoints load through transformers")

    # True when an adapter cannot be trained on this scheme's modules: the tuner trains on the unquantized
    # base, and the adapter is served on the quantized model.
    trains_on_base: ClassVar[bool] = False

    def make_trainable(self, model: Any) -> Any:
        """Turn this scheme's modules into ones gradients flow through, holding the same values (so an
        adapter learns to correct exactly the weights it will run on). Default: nothing to do."""
        return model


class Tuner(ABC):
    method: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _trace(cls, "tuner", ("train", "attach"))


    @abstractmethod
    def train(self, task: Task, loaded: LoadedModel, spec: TaskSpec, rows: Sequence[Any], out_dir: Path,
              seed: int = 0) -> TrainResult: ...

    @abstractmethod
    def attach(self, loaded: LoadedModel, adapter_dir: Path) -> LoadedModel: ...


class TrainResult(BaseModel):
    steps: int
    epochs: int
    seconds: float
    loss_first: float
    loss_last: float
    loss_curve: list[tuple[int, float]] = []  # (step, loss), averaged down to LOSS_CURVE_POINTS
    trainable_params: int
    total_params: int
    settings: dict[str, float | int | str | list[str]]
