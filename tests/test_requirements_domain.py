"""Requirements validation: every error listed, each saying what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.requirements.domain import RequirementsError, check_data, parse_requirements, render_markdown
from shared.artifacts import ArtifactStore
from shared.modeling.datasets import DatasetError
from weightflow.submission import prepare

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "support-tickets" / "requirements.yaml"


def test_shipped_example_is_valid_and_renders() -> None:
    req = parse_requirements(EXAMPLE.read_text())
    assert req.deployment.name == "ticket-router" and len(req.task.labels) == 4
    md = render_markdown(req, 3, "ab" * 32)
    assert "# Requirements: support-ticket-router (v3)" in md
    assert f"≥ {req.quality.threshold:.3f}" in md and "edge-cpu-96mb" in md


def test_malformed_yaml_names_the_line() -> None:
    with pytest.raises(RequirementsError, match=r"not valid YAML at line \d+, column \d+"):
        parse_requirements("name: x\ntask: {a: 1\n  b: : 2\nquality: 1\n")


def test_every_error_is_listed_with_its_field() -> None:
    text = EXAMPLE.read_text().replace("threshold: 0.", "threshold: 7.").replace("p95_ms:", "p95_msec:")
    text = text.replace("mode: self-hosted", "mode: api")
    with pytest.raises(RequirementsError) as info:
        parse_requirements(text)
    joined = "\n".join(info.value.errors)
    assert "quality.threshold" in joined
    assert "latency.p95_msec: unknown field" in joined and "latency.p95_ms" in joined
    assert "mode 'api'" in joined
    assert len(info.value.errors) >= 4


def test_not_a_mapping() -> None:
    with pytest.raises(RequirementsError, match="mapping"):
        parse_requirements("- a\n- b\n")


def test_data_checks_find_unknown_labels_and_broken_lines(tmp_path: Path) -> None:
    folder = tmp_path / "ex"
    folder.mkdir()
    for f in EXAMPLE.parent.glob("*.jsonl"):
        (folder / f.name).write_text(f.read_text())
    (folder / "requirements.yaml").write_text(EXAMPLE.read_text())
    with (folder / "eval.jsonl").open("a") as fh:
        fh.write('{"id": "x1", "text": "hello", "label": "weather"}\n{"id": "x2", "text": \n')
    with pytest.raises(RequirementsError) as info:
        prepare(folder / "requirements.yaml", ArtifactStore(tmp_path / "store"))
    message = "\n".join(info.value.errors)
    assert "data.eval" in message and ":642:" in message  # the broken line, by number
    (folder / "eval.jsonl").write_text((EXAMPLE.parent / "eval.jsonl").read_text()
                                       + '{"id": "x1", "text": "hello", "label": "weather"}\n')
    with pytest.raises(RequirementsError, match=r"labels \['weather'\] are not in task.labels"):
        prepare(folder / "requirements.yaml", ArtifactStore(tmp_path / "store"))
    (folder / "canary.jsonl").unlink()
    with pytest.raises(RequirementsError, match=r"data\.canary: .* does not exist"):
        prepare(folder / "requirements.yaml", ArtifactStore(tmp_path / "store"))


def test_tuning_needs_train_and_general() -> None:
    req = parse_requirements(EXAMPLE.read_text().replace("  train: train.jsonl", "").replace(
        "  general: general.jsonl", ""))

    def loader(split: str) -> list[object]:
        raise DatasetError(["unreachable"])

    errors = check_data(req, loader, {"eval": "d", "canary": "d"})
    assert any("data.train and data.general are needed" in e for e in errors)
