"""Paired comparisons of two evaluations on the same rows, read from their sample logs (#23 part 2): a variant
against the model it was made from, the base with its adapter against the base alone, the candidates of one
size class. Two scores on the same rows differ less by chance than two independent scores do, so a pairing
shows a difference (or its absence) that comparing two intervals would miss."""

from __future__ import annotations

import logging

from weightflow.contracts.measurement import Comparison, Measurement, SampleRow
from weightflow.shared import sample_logs
from weightflow.shared.artifacts import ArtifactStore, IntegrityError
from weightflow.shared.stats import compare_rows

log = logging.getLogger(__name__)


def _rows(store: ArtifactStore, m: Measurement) -> list[SampleRow] | None:
    if m.sample_rows is not None:
        return m.sample_rows
    if m.samples is None:
        return None  # measured by a release before sample logs were kept
    try:
        return sample_logs.load(store, m.samples)
    except (OSError, ValueError, IntegrityError):  # missing, corrupt or not a sample log: no comparison, no crash
        log.warning("sample log %s could not be read; no paired comparison", m.samples, exc_info=True)
        return None


def compare(store: ArtifactStore, baseline: Measurement, candidate: Measurement, *, baseline_name: str,
            candidate_name: str, confidence: float) -> Comparison | None:
    """`candidate` against `baseline` on the rows both scored, or None without both sample logs."""
    a, b = _rows(store, baseline), _rows(store, candidate)
    if a is None or b is None:
        return None
    return compare_rows([(r.id, r.score) for r in a], [(r.id, r.score) for r in b], baseline_name=baseline_name,
                        candidate_name=candidate_name, confidence=confidence)
