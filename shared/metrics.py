"""Prometheus metrics of a weightflow process, named by Prometheus' rules: one `weightflow_` prefix, base
units (seconds, bytes), `_total` counters, `_info` metadata, and labels whose values are bounded (service,
event type, outcome, reason, deployment — never a run id, manifest id or subject that carries one).

Bus metrics are counted where the bus does the work (shared.bus.runtime); workflow metrics (runs,
reroutes, halts, rollbacks, each deployment's last canary) are a projection of the events a process
publishes (`observe_published`), so whichever replica emitted an event counts it and `sum`/`max` across
replicas gives the deployment's view. faststream's own Prometheus middleware is not used: it labels
publishes by destination subject, and the run registry's subjects carry a run id (an unbounded label).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, Info

from weightflow.contracts.base import EVENT_TYPES, SUBJECT_PREFIX, decode_json
from weightflow.contracts.benchmark import NoCandidatePassed
from weightflow.contracts.fitting import FitFailed
from weightflow.contracts.monitoring import CanaryFailed, CanaryPassed, DriftDetected
from weightflow.contracts.registry import DeploymentPromoted, PromotionSkipped, RolledBack
from weightflow.contracts.requirements import RequirementsAccepted, RequirementsRejected
from weightflow.contracts.tuning import AdapterRefused, TuningSkipped
from weightflow.contracts.workflow import DeadLettered, WorkflowHalted, WorkflowRerouted, WorkflowResumed

PREFIX = "weightflow"
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

BUILD = Info(f"{PREFIX}_build", "weightflow's version in this process")
try:
    BUILD.info({"version": version("weightflow")})
except PackageNotFoundError:  # run from a source tree that was never installed
    BUILD.info({"version": "unknown"})

# -- the bus ----------------------------------------------------------------------------------------
EVENTS_CONSUMED = Counter(f"{PREFIX}_events_consumed_total",
                          "Deliveries a service finished, by event type and outcome "
                          "(handled, duplicate, retried, dead_lettered, handed_back)",
                          ["service", "event", "outcome"])
EVENTS_PUBLISHED = Counter(f"{PREFIX}_events_published_total", "Events a service published to the stream",
                           ["service", "event"])
DEAD_LETTERS = Counter(f"{PREFIX}_dead_letters_total", "Messages a service dead-lettered, by reason",
                       ["service", "reason"])
REDELIVERIES = Counter(f"{PREFIX}_redeliveries_total",
                       "Deliveries of a message that had been delivered before (a crash, a NAK, a timeout)",
                       ["service", "event"])
HANDLER_SECONDS = Histogram(f"{PREFIX}_handler_duration_seconds",
                            "Time from a message's arrival to its ack or NAK (run check, handler, commit, publish)",
                            ["service", "event"], buckets=_SECONDS)
OUTBOX_UNPUBLISHED = Gauge(f"{PREFIX}_outbox_unpublished_events", "Committed events not yet on the stream",
                           ["service"])
OUTBOX_OLDEST_AGE = Gauge(f"{PREFIX}_outbox_oldest_unpublished_age_seconds",
                          "Age of the oldest committed event not yet on the stream (0 when none waits)", ["service"])
CONSUMER_PENDING = Gauge(f"{PREFIX}_consumer_pending_messages",
                         "Messages on the stream that a service's consumer has not yet been given (its lag)",
                         ["service", "event"])
CONSUMER_ACK_PENDING = Gauge(f"{PREFIX}_consumer_ack_pending_messages",
                             "Messages a service's consumer was given and has not acked yet", ["service", "event"])
CONSUMER_REBINDS = Counter(f"{PREFIX}_consumer_rebinds_total",
                           "Consumers bound again after they stopped pulling while work waited (shared.bus.stalls)",
                           ["service", "event"])
SERVICE_READY = Gauge(f"{PREFIX}_service_ready", "1 when the service is connected, bound and not draining",
                      ["service"])

# -- traces -----------------------------------------------------------------------------------------
SPANS_EXPORTED = Counter(f"{PREFIX}_spans_exported_total", "Spans a sink accepted", ["sink"])
SPANS_DROPPED = Counter(f"{PREFIX}_spans_dropped_total",
                        "Spans lost on the way to a sink (queue_full: the collector is slower than the spans "
                        "come; export_failed: it refused or did not answer)", ["sink", "reason"])

# -- the workflow (from published events) -----------------------------------------------------------
RUNS_STARTED = Counter(f"{PREFIX}_runs_started_total", "Runs accepted (trigger: submitted, or rerouted)",
                       ["trigger"])
RUNS_ENDED = Counter(f"{PREFIX}_runs_ended_total", "Runs that reached an ending, by outcome", ["outcome"])
REROUTES = Counter(f"{PREFIX}_reroutes_total", "Automatic reroutes (loop-backs)", ["deployment"])
HALTS = Counter(f"{PREFIX}_halts_total", "Workflows halted for an operator", ["deployment"])
HALTED = Gauge(f"{PREFIX}_deployment_halted", "1 while a deployment's workflow waits for an operator",
               ["deployment"])
ROLLBACKS = Counter(f"{PREFIX}_rollbacks_total", "Rollbacks to an earlier release", ["deployment"])
DRIFTS = Counter(f"{PREFIX}_drift_detected_total", "Drift alerts, by kind", ["deployment", "kind"])
CANARIES = Counter(f"{PREFIX}_canaries_total",
                   "Canaries run, by outcome (passed, the failure's kind, or refused_before_promotion)",
                   ["deployment", "outcome"])
CANARY_PASSED = Gauge(f"{PREFIX}_canary_passed", "1 when the deployment's last canary passed", ["deployment"])
CANARY_SCORE = Gauge(f"{PREFIX}_canary_score", "The last canary's score (its requirements' metric)",
                     ["deployment"])
CANARY_SCORE_LOW = Gauge(f"{PREFIX}_canary_score_interval_low", "Lower bound of the last canary score's interval",
                         ["deployment"])
CANARY_SCORE_HIGH = Gauge(f"{PREFIX}_canary_score_interval_high",
                          "Upper bound of the last canary score's interval", ["deployment"])
CANARY_P95 = Gauge(f"{PREFIX}_canary_latency_p95_seconds", "The last canary's p95 latency", ["deployment"])
CANARY_COST = Gauge(f"{PREFIX}_canary_cost_per_1k_usd", "The last canary's cost per 1,000 tasks",
                    ["deployment"])
CANARY_ROWS = Gauge(f"{PREFIX}_canary_rows", "Rows the last canary's score rests on", ["deployment"])
CANARY_LAST = Gauge(f"{PREFIX}_canary_last_timestamp_seconds",
                    "When the deployment's last canary ended (time() - this: seconds since)", ["deployment"])
CANARY_LAG = Histogram(f"{PREFIX}_canary_start_lag_seconds",
                       "How late a scheduled canary started after its slot (the schedule's own delay: tick, "
                       "queue, hop)", buckets=_SECONDS)
# Timestamps, not a pass/fail gauge, decide the alert: with several monitoring replicas (or one restarted) the
# newest verdict is the one with the newest timestamp, whichever process holds it.
CANARY_LAST_PASSED = Gauge(f"{PREFIX}_canary_last_passed_timestamp_seconds", "When a canary last passed",
                           ["deployment"])
CANARY_LAST_FAILED = Gauge(f"{PREFIX}_canary_last_failed_timestamp_seconds", "When a canary last failed",
                           ["deployment"])


def event_label(subject: str) -> str:
    """The event type of a workflow subject; anything else (the run registry, a stranger) is `other`, so a
    subject that carries an id never becomes a label value."""
    name = subject.removeprefix(f"{SUBJECT_PREFIX}.")
    return name if name in EVENT_TYPES else "other"


Fields = dict[str, Any]  # a published event's JSON: the projections read a few fields, no model is built


def _run_ended(outcome: str) -> Callable[[Fields], None]:
    return lambda _: RUNS_ENDED.labels(outcome).inc()


def _deployment(e: Fields) -> str:
    return str(e.get("deployment", ""))


def _accepted(e: Fields) -> None:
    attempt = (e.get("context") or {}).get("attempt", 0)
    RUNS_STARTED.labels("submitted" if not attempt else "rerouted").inc()


def _rerouted(e: Fields) -> None:
    REROUTES.labels(_deployment(e)).inc()
    RUNS_ENDED.labels("rerouted").inc()


def _halted(e: Fields) -> None:
    HALTS.labels(_deployment(e)).inc()
    HALTED.labels(_deployment(e)).set(1)
    RUNS_ENDED.labels("halted").inc()


def _canary(passed: bool) -> Callable[[Fields], None]:
    def observe(e: Fields) -> None:
        deployment, now = _deployment(e), time.time()
        if e.get("before_promotion"):
            # A release refused before it went live: the live release (what the gauges and the canary alert
            # describe) is unchanged and healthy, so only the count says it happened.
            CANARIES.labels(deployment, "refused_before_promotion").inc()
            return
        CANARIES.labels(deployment, "passed" if passed else str(e.get("kind", "failed"))).inc()
        CANARY_PASSED.labels(deployment).set(1 if passed else 0)
        CANARY_LAST.labels(deployment).set(now)
        (CANARY_LAST_PASSED if passed else CANARY_LAST_FAILED).labels(deployment).set(now)
        m = e.get("measurement")
        if not isinstance(m, dict):
            return
        score = float(m["score"])
        interval = m.get("interval") or {"low": score, "high": score}
        CANARY_SCORE.labels(deployment).set(score)
        CANARY_SCORE_LOW.labels(deployment).set(float(interval["low"]))
        CANARY_SCORE_HIGH.labels(deployment).set(float(interval["high"]))
        CANARY_P95.labels(deployment).set(float(m["latency_ms_p95"]) / 1000.0)
        CANARY_COST.labels(deployment).set(float(m["cost_per_1k_usd"]))
        CANARY_ROWS.labels(deployment).set(int(m["n"]))

    return observe


# What each published event means for the workflow's metrics.
_PROJECTIONS: dict[str, Callable[[Fields], None]] = {cls.type_name(): fn for cls, fn in (
    (RequirementsAccepted, _accepted),
    (RequirementsRejected, _run_ended("rejected")),
    (NoCandidatePassed, _run_ended("no_candidate")),
    (FitFailed, _run_ended("fit_failed")),
    (AdapterRefused, _run_ended("tuning_failed")),
    (TuningSkipped, _run_ended("tuning_skipped")),
    (DeploymentPromoted, _run_ended("promoted")),
    (PromotionSkipped, _run_ended("promotion_skipped")),
    (RolledBack, lambda e: ROLLBACKS.labels(_deployment(e)).inc()),
    (WorkflowRerouted, _rerouted),
    (WorkflowHalted, _halted),
    (WorkflowResumed, lambda e: HALTED.labels(_deployment(e)).set(0)),
    (DeadLettered, _run_ended("dead_lettered")),
    (CanaryPassed, _canary(True)),
    (CanaryFailed, _canary(False)),
    (DriftDetected, lambda e: DRIFTS.labels(_deployment(e), str(e.get("kind", ""))).inc()),
)}


def observe_published(service: str, subject: str, payload: bytes) -> None:
    """Count an event this process put on the stream, and project it onto the workflow's metrics. Never
    raises: a metric must not fail a publish. Runs on the event loop, so it reads the JSON, not the model."""
    event = event_label(subject)
    EVENTS_PUBLISHED.labels(service, event).inc()
    project = _PROJECTIONS.get(event)
    if project is None:
        return
    try:
        fields = decode_json(payload)
        if isinstance(fields, dict):
            project(fields)
    except Exception:  # an event we published is valid; if not, the metric is what is lost, not the event
        return
