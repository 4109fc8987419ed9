"""The bench keeps working: its smoke mode runs and writes well-formed results. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import Stat, percentile, union_length

ROOT = Path(__file__).resolve().parents[2]


def test_union_counts_overlaps_once_and_clips_to_the_window() -> None:
    assert union_length([(0, 2), (1, 3), (5, 6)], 0, 10) == pytest.approx(4.0)
    assert union_length([(0, 2), (1, 3), (5, 6)], 1.5, 5.5) == pytest.approx(2.0)
    assert union_length([], 0, 1) == 0.0


def test_statistics() -> None:
    stat = Stat.of([4.0, 1.0, 3.0, 2.0])
    assert (stat.median, stat.min, stat.max, stat.n) == (2.5, 1.0, 4.0, 4)
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)


@pytest.mark.slow
def test_smoke_mode_writes_results(tmp_path: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--only", "hashing,quantization,serving,artifact_store",
         "--reps", "1", "--out", str(tmp_path)],
        # four comparisons at tiny sizes: 300 s ran out on a loaded 2-core machine
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=540, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("hashing", "quantization", "serving", "artifact_store"):
        doc = json.loads((tmp_path / f"{name}.json").read_text())
        assert doc["name"] == name
        assert doc["config"]["smoke"] is True
        assert {"cpu_model", "cpu_cores", "torch", "device", "mem_total_gib"} <= set(doc["machine"])
        assert doc["rows"], f"{name} produced no rows"
        for row in doc["rows"]:
            assert {"metric", "unit", "weightflow", "baseline", "baseline_name", "ratio", "better", "note"} <= set(row)
            for side in ("weightflow", "baseline"):
                if row[side] is not None:
                    assert {"median", "p25", "p75", "min", "max", "n", "samples"} <= set(row[side])
                    assert row[side]["n"] == len(row[side]["samples"]) >= 1
            if row["weightflow"] is not None and row["baseline"] is not None and row["baseline"]["median"]:
                assert row["ratio"] == pytest.approx(row["weightflow"]["median"] / row["baseline"]["median"])
        assert "### " in proc.stdout


@pytest.mark.slow
def test_the_canary_schedule_bench_runs_end_to_end_in_smoke_mode(tmp_path: Path) -> None:
    """Its own process: two real monitoring replicas on an embedded nats-server, about 40 s."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--only", "canary_schedule", "--reps", "1", "--out", str(tmp_path)],
        cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"), capture_output=True, text=True,
        timeout=400, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {row["metric"]: row for row in json.loads((tmp_path / "canary_schedule.json").read_text())["rows"]}
    assert any(m.startswith("tick with 20 due of 10,000") and r["baseline"] for m, r in rows.items())
    (e2e,) = [r for m, r in rows.items() if m.startswith("canary start lag")]
    assert "0 twice" in e2e["note"], e2e["note"]  # two replicas never claimed a slot twice


@pytest.mark.slow
def test_the_offload_bench_measures_a_tiny_llama_whole_and_offloaded(tmp_path: Path) -> None:
    """Its own processes, real measurements of a tiny Llama: the table has the baseline and the offloaded row."""
    from tests.lm_fixtures import tiny_llama

    model = tiny_llama(tmp_path / "tiny", hidden=64, layers=2)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.offload", "generation", str(model), "0"],
        cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"), capture_output=True, text=True,
        timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| all (whole model) |") and "1.00×" in rows[1]
    assert rows[2].startswith("| at most 0 MB, the rest on disk |") and "RssAnon peak" in rows[2], rows
