"""Sample logs: the rows an evaluation scored, stored beside its measurement so "why did it score that?" has an
answer without a script.

Every service that evaluates calls `keep` before it publishes the measurement: the rows go to the artifact store
as JSONL (one SampleRow a line) and the measurement names them by digest, in the same transaction as the event
that carries it. The store is content-addressed: the same rows stored twice are one file. A handler redelivered
after a crash evaluates again, and its rows differ at least in their latencies, so it stores a second log; the
event names only the one its committed transaction holds, and the other stays in the store unnamed (the store
keeps what it is given; nothing collects unnamed files yet). Readers (`weightflow samples`, the HTML report) use
`parse`.
"""

from __future__ import annotations

from collections.abc import Sequence

from weightflow.contracts.measurement import Measurement, SampleRow
from weightflow.shared.artifacts import ArtifactStore

MAX_LOG_BYTES = 128 * 1024 * 1024  # under the store's cap on a text file; rows past it are left out, never a crash


def encode(rows: Sequence[SampleRow]) -> bytes:
    lines, size = [], 0
    for row in rows:
        line = row.model_dump_json().encode() + b"\n"
        size += len(line)
        if size > MAX_LOG_BYTES:
            break
        lines.append(line)
    return b"".join(lines)


def parse(data: bytes) -> list[SampleRow]:
    """The rows of a stored sample log (ValueError, from pydantic, for a file that is not one)."""
    return [SampleRow.model_validate_json(line) for line in data.splitlines() if line.strip()]


def keep(store: ArtifactStore, m: Measurement) -> Measurement:
    """`m` naming its stored sample log; unchanged when it holds no rows (a measurement made elsewhere)."""
    rows = m.sample_rows
    if rows is None:
        return m
    return m.kept_as(store.put_bytes(encode(rows), suffix_hint=".jsonl"))


def load(store: ArtifactStore, digest: str) -> list[SampleRow]:
    return parse(store.read_bytes(digest))
