"""Measured peaks, kept by what they depend on: a tree measured once at a shape is not measured again.

A measurement starts a fresh interpreter (torch, transformers, the model, a serving batch): about 8 s of CPU for
MiniLM-L3 on 2 cores, paid by every run of the same model before this cache, one at a time per fitting replica.
What a peak depends on is the key: the tree's digest (its bytes, a placement included), the task spec (the serving
shape follows from it), the device it is measured on, the serving batch, the measuring code (`PEAK_METHOD`) and
the versions of weightflow, torch and transformers. A cached peak says so in its note.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

from sqlmodel import Session

from weightflow.contracts.base import Event
from weightflow.contracts.requirements import Requirements, TaskSpec
from weightflow.services.fitting.tables import MeasuredPeakRecord
from weightflow.shared.bus import HandlerContext
from weightflow.shared.modeling.budget import SERVING_BATCH
from weightflow.shared.modeling.device import pick_device
from weightflow.shared.modeling.peak import PEAK_METHOD, PeakMeasured
from weightflow.shared.modeling.stored import task_of


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def peak_key(tree_digest: str, spec: TaskSpec, device: str, batch: int = SERVING_BATCH) -> str:
    parts = {"tree": tree_digest, "spec": spec.model_dump(mode="json"), "device": device, "batch": batch,
             "method": PEAK_METHOD, "weightflow": _version("weightflow"), "torch": _version("torch"),
             "transformers": _version("transformers")}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class PeakCache:
    """One handler call's view of the cache: reads at once, writes in the handler's commit (`keeping`)."""

    def __init__(self, ctx: HandlerContext, run_id: str) -> None:
        self.ctx, self.run_id = ctx, run_id
        self.new: dict[str, MeasuredPeakRecord] = {}

    def measure(self, model_dir: Path, tree_digest: str, req: Requirements) -> tuple[PeakMeasured, str]:
        """The peak, and a note when it was measured before (empty when measured now)."""
        device = str(pick_device(self.ctx.settings.device))
        key = peak_key(tree_digest, req.task, device)
        row = self.new.get(key) or self.ctx.read(lambda session: session.get(MeasuredPeakRecord, key))
        if row is not None:
            note = "" if key in self.new else (f"measured before, by run {row.run_id[:8]} at "
                                                f"{row.measured_at:%Y-%m-%d %H:%M} UTC (same tree, shape and device)")
            return PeakMeasured.model_validate_json(row.peak_json), note
        peak = task_of(req.task).runtime().measure_peak(model_dir, req.task, device)
        self.new[key] = MeasuredPeakRecord(key=key, tree_digest=tree_digest, peak_json=peak.model_dump_json(),
                                           run_id=self.run_id)
        return peak, ""

    def save(self, session: Session) -> None:
        for row in self.new.values():
            session.merge(row)  # another run may have measured the same key meanwhile: the same answer either way

    def keeping(self, result: Sequence[Event] | Callable[[Session], Sequence[Event]]
                ) -> Callable[[Session], Sequence[Event]]:
        """`result` as a commit that also keeps what was measured."""

        def commit(session: Session) -> Sequence[Event]:
            self.save(session)
            return result(session) if callable(result) else result

        return commit
