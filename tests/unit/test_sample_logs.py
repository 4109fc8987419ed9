"""Sample logs: the evaluated rows a measurement holds are stored once, by content, and named by digest in the
events; a measurement from before sample logs still reads."""

from __future__ import annotations

from pathlib import Path

from weightflow.contracts.measurement import SAMPLE_INPUT_CHARS, Measurement, SampleRow
from weightflow.shared import sample_logs
from weightflow.shared.artifacts import ArtifactStore

BARE = {"score": 0.5, "latency_ms_p50": 1.0, "latency_ms_p95": 2.0, "cost_per_1k_usd": 0.0, "throughput_per_s": 9.0,
        "n": 2}


def test_keep_stores_the_rows_and_the_digest_round_trips(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    rows = [SampleRow.of("eval-1", "x" * 5000, "billing", "billing", 1, 3.5),
            SampleRow.of("eval-2", "where is it", "billing", "shipping", 0)]
    assert len(rows[0].input) == SAMPLE_INPUT_CHARS and rows[0].input.endswith("…") and rows[1].wrong
    held = Measurement(**BARE).with_rows(rows)
    kept = sample_logs.keep(store, held)
    assert kept.samples is not None and kept.sample_rows is None, "the event carries the digest, not the rows"
    assert sample_logs.load(store, kept.samples) == rows
    again = Measurement.model_validate_json(kept.model_dump_json())
    assert again == kept and again.samples == kept.samples
    assert sample_logs.keep(store, held).samples == kept.samples, "the same rows stored again are one file"
    assert "samples" not in Measurement.model_validate(BARE).model_dump(exclude_defaults=True)
    untouched = Measurement(**BARE)  # a measurement made elsewhere holds no rows: nothing to store
    assert sample_logs.keep(store, untouched) is untouched and untouched.samples is None
