"""The workflow's topology, declared once: which service consumes and emits which event.

Everything that needs to know the shape of the workflow derives from this table: the services'
handler registration (a handler for an event not listed here is an error), their NATS permissions,
the embedded stack's process list, compose.yaml's check, the README's table and the in-process runner.
"""

from __future__ import annotations

from dataclasses import dataclass

from weightflow.contracts.base import Event
from weightflow.contracts.benchmark import (
    BenchmarkRequested,
    CandidateBenchmarked,
    CandidateUnavailable,
    NoCandidatePassed,
    SelectionDecided,
    VariantBenchmarked,
)
from weightflow.contracts.fitting import FitCompleted, FitFailed, FitNeedsTuning, FitSkipped, MemoryBudgetComputed
from weightflow.contracts.monitoring import (
    CanaryFailed,
    CanaryPassed,
    CanaryRequested,
    DriftDetected,
    ServingEndpointAnnounced,
)
from weightflow.contracts.registry import (
    DeploymentPromoted,
    ModelRegistered,
    PromotionApproved,
    PromotionAwaitingApproval,
    PromotionDecided,
    PromotionRejected,
    PromotionSkipped,
    RollbackCommanded,
    RollbackRequested,
    RolledBack,
)
from weightflow.contracts.requirements import (
    RequirementsAccepted,
    RequirementsChanged,
    RequirementsRejected,
    RequirementsSubmitted,
)
from weightflow.contracts.tuning import AdapterRefused, AdapterTrained, TuningGated, TuningSkipped
from weightflow.contracts.workflow import (
    DeadLettered,
    RequestRefused,
    ResumeRequested,
    WorkflowHalted,
    WorkflowRerouted,
    WorkflowResumed,
)


@dataclass(frozen=True)
class Stage:
    number: int
    service: str
    role: str
    consumes: tuple[type[Event], ...]
    emits: tuple[type[Event], ...]


# Events that end an attempt unsuccessfully: the router closes a reroute on them.
RUN_FAILURES: tuple[type[Event], ...] = (
    NoCandidatePassed, FitFailed, TuningSkipped, AdapterRefused, PromotionSkipped, DeadLettered,
)

STAGES: tuple[Stage, ...] = (
    Stage(1, "requirements", "validate, version, and route loop-backs",
          consumes=(RequirementsSubmitted, RequirementsChanged, ResumeRequested, CanaryFailed, CanaryPassed,
                    *RUN_FAILURES),
          emits=(RequirementsAccepted, RequirementsRejected, WorkflowRerouted, WorkflowHalted, WorkflowResumed,
                 RollbackCommanded, RequestRefused)),
    Stage(2, "benchmark", "measure candidates smallest first, select",
          consumes=(RequirementsAccepted, BenchmarkRequested),
          emits=(CandidateBenchmarked, CandidateUnavailable, SelectionDecided, NoCandidatePassed,
                 VariantBenchmarked)),
    Stage(3, "fitting", "memory budget, quantize, re-benchmark; decide tune or register",
          consumes=(SelectionDecided, VariantBenchmarked),
          emits=(MemoryBudgetComputed, BenchmarkRequested, FitSkipped, FitCompleted, FitNeedsTuning, FitFailed)),
    Stage(4, "tuning", "LoRA on the fitted base, dual gate",
          consumes=(FitNeedsTuning,),
          emits=(AdapterTrained, TuningGated, AdapterRefused, TuningSkipped)),
    Stage(5, "registry", "pin, promote, roll back",
          consumes=(FitCompleted, TuningGated, RollbackRequested, RollbackCommanded, RequirementsAccepted,
                    CanaryPassed, PromotionApproved, PromotionRejected),
          emits=(ModelRegistered, DeploymentPromoted, PromotionSkipped, PromotionAwaitingApproval, PromotionDecided,
                 CanaryFailed, RolledBack, RequestRefused)),
    Stage(6, "monitoring", "canaries and drift alerts",
          consumes=(DeploymentPromoted, CanaryRequested, WorkflowResumed, ServingEndpointAnnounced),
          emits=(CanaryRequested, CanaryPassed, CanaryFailed, DriftDetected, RequestRefused)),
)

SERVICES: tuple[str, ...] = tuple(s.service for s in STAGES)
# Published by people and tools (the CLI's admin user), not by a service.
OPERATOR_EVENTS: tuple[type[Event], ...] = (
    RequirementsSubmitted, RequirementsChanged, RollbackRequested, CanaryRequested, ResumeRequested,
    ServingEndpointAnnounced, PromotionApproved, PromotionRejected,
)
# Every service may dead-letter what it cannot handle.
ALWAYS_EMITTED: tuple[type[Event], ...] = (DeadLettered,)
# What an alerting system may subscribe to: what went wrong, and what waits for a person (an approval).
ALERTS: tuple[type[Event], ...] = (DriftDetected, CanaryFailed, CanaryPassed, WorkflowHalted, RolledBack,
                                   PromotionAwaitingApproval)


def stage(service: str) -> Stage:
    for s in STAGES:
        if s.service == service:
            return s
    raise KeyError(f"unknown service {service!r}; the workflow's services are {', '.join(SERVICES)}")


def _names(events: tuple[type[Event], ...]) -> str:
    return ", ".join(f"`{e.__name__}`" for e in events)


def markdown_table() -> str:
    """The README's table of stages, generated from the declaration above."""
    rows = ["| stage | service | consumes | emits |", "|---|---|---|---|"]
    for s in STAGES:
        rows.append(f"| {s.number} {s.role} | `services/{s.service}` | {_names(s.consumes)} | {_names(s.emits)} |")
    return "\n".join(rows)


def mermaid_flowchart() -> str:
    """docs/architecture.md's diagram of services and the events between them, generated from STAGES: an edge
    per (emitter, consumer) pair, labelled with every event type that travels it; operators' and alerting's ends
    drawn as their own boxes."""
    edges: dict[tuple[str, str], list[str]] = {}

    def add(source: str, target: str, event: type[Event]) -> None:
        names = edges.setdefault((source, target), [])
        if event.__name__ not in names:
            names.append(event.__name__)

    for event in OPERATOR_EVENTS:
        for consumer in STAGES:
            if event in consumer.consumes:
                add("operator", consumer.service, event)
    for event in ALWAYS_EMITTED:
        for consumer in STAGES:
            if event in consumer.consumes:
                add("every", consumer.service, event)
    for emitter in STAGES:
        for event in emitter.emits:
            for consumer in STAGES:
                if event in consumer.consumes:
                    add(emitter.service, consumer.service, event)
            if event in ALERTS:
                add(emitter.service, "alerting", event)
    lines = ["flowchart LR", '    operator(["operator: the CLI, as the admin user"])',
             '    every(["every service"])', '    alerting(["alerting systems"])']
    lines += [f'    {s.service}["{s.number} {s.service}: {s.role}"]' for s in STAGES]
    for (source, target), names in edges.items():
        lines.append(f"    {source} -->|{'<br/>'.join(names)}| {target}")
    return "\n".join(lines)
