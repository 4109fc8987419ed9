"""Requirements validation: every error listed, each saying what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from weightflow.contracts.requirements_doc import RequirementsError, parse_requirements
from weightflow.services.requirements.domain import render_markdown
from weightflow.shared.artifacts import ArtifactStore
from weightflow.shared.modeling.validation import check_requirements
from weightflow.submission import prepare

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support-tickets" / "requirements.yaml"


def test_shipped_example_is_valid_and_renders() -> None:
    req = parse_requirements(EXAMPLE.read_text())
    assert req.deployment.name == "ticket-router" and len(req.task.labels) == 4
    md = render_markdown(req, 3, "ab" * 32)
    assert "# Requirements: support-ticket-router (v3)" in md
    assert f"≥ {req.quality.threshold:.3f}" in md and "edge-cpu-140mb" in md


def test_malformed_yaml_names_the_line() -> None:
    with pytest.raises(RequirementsError, match=r"not valid YAML at line \d+, column \d+"):
        parse_requirements("name: x\ntask: {a: 1\n  b: : 2\nquality: 1\n")


def test_every_error_is_listed_with_its_field() -> None:
    text = EXAMPLE.read_text().replace("threshold: 0.", "threshold: 7.").replace("p95_ms:", "p95_msec:")
    with pytest.raises(RequirementsError) as info:
        parse_requirements(text)
    joined = "\n".join(info.value.errors)
    assert "quality.threshold" in joined
    assert "latency.p95_msec: unknown field" in joined and "latency.p95_ms" in joined
    assert len(info.value.errors) >= 3


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
    assert "data.eval:642:" in message  # the broken line, by number
    (folder / "eval.jsonl").write_text((EXAMPLE.parent / "eval.jsonl").read_text()
                                       + '{"id": "x1", "text": "hello", "label": "weather"}\n')
    with pytest.raises(RequirementsError, match=r"labels \['weather'\] are not in task.labels"):
        prepare(folder / "requirements.yaml", ArtifactStore(tmp_path / "store"))
    (folder / "canary.jsonl").unlink()
    with pytest.raises(RequirementsError, match=r"data\.canary 'canary.jsonl' does not exist"):
        prepare(folder / "requirements.yaml", ArtifactStore(tmp_path / "store"))


def test_tuning_needs_train_and_general() -> None:
    req = parse_requirements(EXAMPLE.read_text().replace("  train: train.jsonl", "").replace(
        "  general: general.jsonl", ""))
    _, errors = check_requirements(req)
    assert any("data.train and data.general are needed" in e for e in errors)


def test_unknown_names_are_listed_with_the_known_ones() -> None:
    text = EXAMPLE.read_text().replace("candidates: [minilm-l3, minilm-l6]", "candidates: [minilm-l3, llama-70b]")
    text = text.replace("type: zero-shot-classification", "type: telepathy").replace("allowed: [int8]",
                                                                                     "allowed: [int8, int3]")
    _, errors = check_requirements(parse_requirements(text))
    assert "candidates.1: unknown model 'llama-70b'; known models: minilm-l3, minilm-l6" in errors
    assert any(e.startswith("task.type: unknown task 'telepathy'; known:") and "text-classification" in e
               for e in errors)
    assert any(e.startswith("quantization.allowed.1: unknown scheme 'int3'") for e in errors)


def test_impossible_hardware_is_refused_with_the_field() -> None:
    text = EXAMPLE.read_text().replace("memory_mb: 140", "memory_mb: -1").replace("cost_per_hour_usd: 0.10",
                                                                                 "cost_per_hour_usd: lots")
    with pytest.raises(RequirementsError) as info:
        parse_requirements(text)
    joined = "\n".join(info.value.errors)
    assert "deployment.hardware.memory_mb" in joined and "deployment.hardware.cost_per_hour_usd" in joined


def test_cli_rejects_bad_files_with_every_error_and_a_non_zero_exit(tmp_path: Path) -> None:
    """Validation happens before anything is published or stored: no server is needed to be told."""
    from typer.testing import CliRunner

    from weightflow.cli import app

    bad = tmp_path / "requirements.yaml"
    bad.write_text(EXAMPLE.read_text().replace("threshold: 0.", "threshold: 9.").replace("eval: eval.jsonl",
                                                                                         "eval: missing.jsonl"))
    runner = CliRunner()
    result = runner.invoke(app, ["submit", str(bad)], env={"WEIGHTFLOW_HOME": str(tmp_path / "home")})
    assert result.exit_code == 2
    said = " ".join(result.output.split())
    assert "quality.threshold" in said and "requirements are not valid" in said, result.output
    assert not (tmp_path / "home" / "artifacts").exists() or not any((tmp_path / "home" / "artifacts").rglob("*.*"))
    missing = runner.invoke(app, ["submit", str(tmp_path / "nope.yaml")], env={"WEIGHTFLOW_HOME": str(tmp_path)})
    assert missing.exit_code == 2 and "nope.yaml" in missing.output
