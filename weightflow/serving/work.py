"""What one batch of requests asks of the live model: classify, embed or complete, with its metrics."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from weightflow.serving import metrics
from weightflow.serving.errors import ApiError
from weightflow.serving.live import LiveDeployment
from weightflow.shared.modeling.protocols import NotServed


@dataclass(frozen=True)
class Prompt:
    """A prompt in a batch, with where its text goes as it is generated (a streaming request) or None."""

    text: str
    sink: Callable[[str], None] | None = None


def batch_work(live: LiveDeployment) -> Callable[[Hashable, list[Any]], tuple[str, Sequence[Any]]]:
    """The batcher's work function: one batch, on the model thread, against the model live when it starts."""
    measured = [""]  # the manifest whose parameter bytes the gauge holds

    def run(key: Hashable, inputs: list[Any]) -> tuple[str, Sequence[Any]]:
        served = live.current  # one snapshot per batch: a swap takes effect at the next batch
        if served is None:
            raise ApiError(503, "no model is loaded yet", type_="server_error")
        if measured[0] != served.manifest_id:
            measured[0] = served.manifest_id
            size = metrics.parameter_bytes(getattr(served.loaded, "model", None))
            if size is not None:
                metrics.MODEL_BYTES.set(size)
        parts = cast(tuple[Any, ...], key)  # ("classify",) | ("embeddings",) | ("completions", params, templated)
        kind: str = parts[0]
        if kind not in served.task.serves:
            raise NotServed(f"the live model (task {served.spec.type}) no longer serves {kind}")
        metrics.BATCH_SIZE.labels(kind).observe(len(inputs))
        started = time.perf_counter()
        try:
            if kind == "classify":
                return served.manifest_id, served.task.runtime().classify(served.loaded, served.spec, inputs)
            if kind == "embeddings":
                return served.manifest_id, served.task.runtime().embeddings(served.loaded, served.spec, inputs)
            params, templated = parts[1], parts[2]
            prompts = cast(list[Prompt], inputs)
            sinks = [p.sink for p in prompts]
            first: list[float] = []

            def on_text(row: int, piece: str) -> None:
                if not first:
                    first.append(time.perf_counter())
                sink = sinks[row]
                if sink is not None:
                    sink(piece)

            completions = served.task.runtime().complete(
                served.loaded, served.spec, [p.text for p in prompts], params, templated=templated,
                on_text=on_text if any(sinks) else None)
            metrics.observe_generation(started, first[0] if first else None, completions)
            return served.manifest_id, completions
        finally:
            metrics.MODEL_SECONDS.labels(kind).observe(time.perf_counter() - started)

    return run
