"""Contracts: the envelope, versioning and decoding every service relies on."""

from __future__ import annotations

import json
from uuid import uuid4

import pytest
from pydantic import ValidationError

from weightflow import contracts
from weightflow.contracts.base import SchemaVersionError, UnknownEventError, parse_event
from weightflow.contracts.monitoring import CanaryRequested
from weightflow.contracts.registry import RollbackRequested


def test_every_event_has_a_unique_subject_under_wf() -> None:
    subjects = [cls.subject() for cls in contracts.EVENT_TYPES.values()]
    assert len(subjects) == len(set(subjects))
    assert all(s.startswith("wf.") and s.count(".") == 2 for s in subjects)
    for name in ("requirements.submitted", "benchmark.selection_decided", "fitting.memory_budget_computed",
                 "tuning.gated", "registry.model_registered", "monitoring.drift_detected", "workflow.rerouted",
                 "fitting.completed", "fitting.needs_tuning", "tuning.adapter_refused"):
        assert name in contracts.EVENT_TYPES


def test_round_trip_keeps_envelope_and_follow_links_cause() -> None:
    cause = CanaryRequested(run_id=uuid4(), deployment="d")
    effect = RollbackRequested.follow(cause, deployment="d")
    assert effect.run_id == cause.run_id and effect.causation_id == cause.event_id
    decoded = parse_event(effect.to_bytes())
    assert decoded == effect and decoded.schema_version == RollbackRequested.SCHEMA_VERSION


def test_newer_schema_version_is_refused_with_what_to_do() -> None:
    data = json.loads(CanaryRequested(run_id=uuid4(), deployment="d").to_bytes())
    data["schema_version"] = CanaryRequested.SCHEMA_VERSION + 1
    with pytest.raises(SchemaVersionError, match="upgrade the consuming service"):
        parse_event(json.dumps(data))


def test_unknown_type_extra_fields_and_garbage_are_errors() -> None:
    with pytest.raises(UnknownEventError):
        parse_event(json.dumps({"event_type": "nope.nope", "run_id": str(uuid4())}))
    data = json.loads(CanaryRequested(run_id=uuid4(), deployment="d").to_bytes())
    data["surprise"] = 1
    with pytest.raises(ValidationError):
        parse_event(json.dumps(data))
    with pytest.raises(ValueError, match="not JSON"):
        parse_event(b"\xff\x00")
    with pytest.raises(ValueError):
        parse_event(json.dumps(data), RollbackRequested)


@pytest.mark.parametrize("payload", [
    b"[" * 200_000 + b"]" * 200_000,  # nested past any parser's recursion
    b"[" * 100 + b"]" * 100,  # nested past the cap, small
    b'{"a": "' + b"x" * (800 * 1024) + b'"}',  # over the event cap
    b"\x00\x01garbage", b"", b"null", b'"string"', b"1e999999",
])
def test_any_payload_is_a_value_error_never_a_crash(payload: bytes) -> None:
    with pytest.raises(ValueError):
        parse_event(payload)


def test_an_unset_runtime_is_left_out_of_the_json_so_an_earlier_release_reads_its_own_default() -> None:
    from weightflow.contracts.requirements import HardwareProfile

    unset = HardwareProfile(profile="edge", memory_mb=512, cost_per_hour_usd=0.1)
    assert unset.runtime_mb is None and "runtime_mb" not in json.loads(unset.model_dump_json())
    assert HardwareProfile.model_validate_json(unset.model_dump_json()) == unset
    explicit = HardwareProfile(profile="edge", memory_mb=512, cost_per_hour_usd=0.1, runtime_mb=0)
    assert json.loads(explicit.model_dump_json())["runtime_mb"] == 0, "an explicit 0 is kept: it means no runtime"
