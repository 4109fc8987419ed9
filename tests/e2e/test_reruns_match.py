"""The same requirements and data, submitted again in another home on the same device, give the same
scores, the same decisions and the same release, byte for byte, LoRA training included; and no pinned file
holds a host path (a release must move between hosts unchanged).

Two fresh WEIGHTFLOW_HOMEs, one after the other, each a real embedded stack (nats-server and six service
processes). The world is the scripted plugin's (tests/plugins/scripted.py): tiny real BERT checkpoints,
really quantized and LoRA-trained by the real model layer, with scores from a script. That is the cheapest
run that still trains an adapter (the real examples take minutes); real scores agreeing between runs is
what tests/integration/test_batch_invariance.py and test_train_lora_is_deterministic pin down on real models.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.plugins.scripted import NAME, SCRIPT_ENV, make_checkpoint
from weightflow.contracts.base import Event
from weightflow.contracts.registry import ModelRegistered
from weightflow.contracts.requirements import RequirementsSubmitted
from weightflow.contracts.tuning import AdapterTrained
from weightflow.shared.modeling.stored import read_manifest
from weightflow.submission import prepare

from ..conftest import EXAMPLE_DIR, LiveStack, start_stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CANDIDATE = "rerun"
# below the 0.80 threshold by less than the tunable gap: the run tunes, and the adapter clears it
SCRIPT = {f"{CANDIDATE}/*/0/eval": 0.75, f"{CANDIDATE}/*/1/eval": 0.9, f"{CANDIDATE}/*/*/canary": 0.9}
# what differs between any two runs by design: identities (and ids derived from them), times, what names them
RUN_FIELDS = {"event_id", "run_id", "causation_id", "request_id", "occurred_at", "created_at", "due_at", "seconds",
              "manifest_id", "manifest_run_id", "previous_manifest_id", "runbook_digest"}


def requirements(folder: Path) -> Path:
    shutil.copytree(EXAMPLE_DIR, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    make_checkpoint(folder / "models" / CANDIDATE, CANDIDATE, padding_params=400_000)
    doc = yaml.safe_load((folder / "requirements.yaml").read_text())
    doc["task"]["type"] = NAME
    doc["deployment"] |= {"name": "rerun"}
    doc["deployment"]["hardware"] |= {"memory_mb": 3, "runtime_mb": 0}
    doc["candidates"] = [{"path": f"models/{CANDIDATE}"}]
    doc["monitoring"]["canary_interval_s"] = 3600
    (folder / "requirements.yaml").write_text(yaml.safe_dump(doc))
    return folder / "requirements.yaml"


def apart(value: Any) -> Any:
    """`value` with the run's identities and times left out."""
    if isinstance(value, dict):
        return {k: apart(v) for k, v in value.items() if k not in RUN_FIELDS}
    if isinstance(value, list):
        return [apart(v) for v in value]
    return value


def run_in(home: Path, doc: Path, script: Path, hash_seed: int) -> tuple[LiveStack, list[Event]]:
    """The run in a fresh stack in `home`, its services hashing strings with `hash_seed`: two hosts' processes
    order a set differently, and so do these (a set written to a pinned file shows)."""
    live = start_stack(home, WEIGHTFLOW_PLUGINS="tests.plugins.scripted", **{SCRIPT_ENV: script},
                       WEIGHTFLOW_CANARY_INTERVAL_S=3600, WEIGHTFLOW_ACK_WAIT_S=20, WEIGHTFLOW_DEVICE="cpu",
                       PYTHONHASHSEED=hash_seed)
    try:
        tracker = live.run(prepare(doc, live.store).event, timeout=300)
        assert tracker.outcome == "succeeded", f"{[e.type_name() for e in tracker.events]}\n{live.logs()}"
        return live, tracker.events
    finally:
        live.stack.stop()


def test_a_rerun_in_another_home_gives_the_same_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT))
    monkeypatch.setenv(SCRIPT_ENV, str(script))  # this process validates the doc with the plugin too
    import tests.plugins.scripted  # noqa: F401

    first_doc = requirements(tmp_path / "a" / "requirements")
    second_doc = tmp_path / "b" / "requirements" / "requirements.yaml"
    shutil.copytree(first_doc.parent, second_doc.parent)  # the same files, at another path
    homes = [tmp_path / "a" / "home", tmp_path / "b" / "home"]
    runs = [run_in(home, doc, script, seed) for seed, (home, doc) in enumerate(zip(homes, (first_doc, second_doc),
                                                                                 strict=True))]

    (first, events_a), (second, events_b) = runs
    assert any(isinstance(e, AdapterTrained) for e in events_a), "the run trained a LoRA adapter"
    assert [e.type_name() for e in events_a] == [e.type_name() for e in events_b]
    problems = [f"{a['event_type']}: {diff(a, b)}" for a, b in zip(map(decision, events_a), map(decision, events_b),
                                                                   strict=True) if a != b]

    registered = [next(e for e in events if isinstance(e, ModelRegistered)) for _, events in runs]
    manifests = [read_manifest(live.store, r.manifest_id) for (live, _), r in zip(runs, registered, strict=True)]
    assert manifests[0].adapter is not None
    pins = [m.checksums() for m in manifests]
    problems += [f"pinned {role} differs" for role in sorted(pins[0]) if pins[0][role] != pins[1].get(role)]
    first_manifest, second_manifest = (apart(m.model_dump(mode="json")) for m in manifests)
    if first_manifest != second_manifest:
        problems.append(f"manifest: {diff(first_manifest, second_manifest)}")

    host = [os.fsencode(str(p)) for p in (*homes, first_doc.parent, second_doc.parent)]
    for live, manifest, r in ((first, manifests[0], registered[0]), (second, manifests[1], registered[1])):
        pinned = {role: live.store.read_bytes(digest) for role, digest in manifest.checksums().items()}
        pinned |= {"manifest": live.store.read_bytes(r.manifest_id), "runbook": live.store.read_bytes(r.runbook_digest)}
        problems += sorted(f"{role} holds a host path" for role, data in pinned.items()
                           for path in host if path in data)
    assert not problems, "\n".join(problems)


def decision(event: Event) -> Any:
    """An event as a decision: without the run's identities and times, nor (for a submission) the path the
    submitter read the file from, which is not its content."""
    out = apart(event.model_dump(mode="json"))
    if isinstance(event, RequirementsSubmitted):
        out.pop("source", None)
    return out


def diff(a: Any, b: Any, where: str = "") -> str:
    """The first places where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        parts = [diff(a.get(k), b.get(k), f"{where}.{k}") for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        return "; ".join(parts[:6])
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return "; ".join(diff(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
    return f"{where}: {str(a)[:120]} != {str(b)[:120]}"
