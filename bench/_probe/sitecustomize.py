"""Timing probe for the orchestration bench, loaded into each service process by PYTHONPATH.

Python imports `sitecustomize` at start-up. When WEIGHTFLOW_BENCH_PROBE names a file, this wraps the
model-layer functions (load, evaluate, quantize, LoRA, checkpoint materialization) and the bus's
handler and periodic-job runners so each call appends one JSON line {kind, name, pid, start, end, ...}
(wall clock, `time.time()`) to that file. Nothing else changes: the wrappers call the originals and
re-raise whatever they raise. Without the variable this module does nothing, and no project file
needs to know it exists. The originals are swapped in every already-imported module that holds a
reference, so `from x import f` bindings made before or after this runs see the wrapper.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
from typing import Any

_PATH = os.environ.get("WEIGHTFLOW_BENCH_PROBE")
_LOCK = threading.Lock()

MODEL_FUNCTIONS = {
    "shared.modeling.encoder": ["load_encoder"],
    "shared.modeling.evaluation": ["evaluate_classification", "evaluate_similarity"],
    "shared.modeling.quantization": ["quantize_int8", "save_quantized"],
    "shared.modeling.lora": ["train_lora", "attach_adapter"],
    "shared.modeling.catalog": ["materialize_candidate"],
}


def _write(record: dict[str, Any]) -> None:
    if _PATH is None:
        return
    line = json.dumps(record, default=str) + "\n"
    with _LOCK, open(_PATH, "a", encoding="utf-8") as out:  # O_APPEND: whole lines across processes
        out.write(line)


def _wrap_model(module: str, name: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            _write({"kind": "model", "name": f"{module}.{name}", "pid": os.getpid(), "start": start,
                    "end": time.time()})

    wrapper.__wf_probe__ = True  # type: ignore[attr-defined]
    return wrapper


def _rebind(original: Any, replacement: Any) -> None:
    for mod in list(sys.modules.values()):
        if mod is None or not getattr(mod, "__name__", "").startswith(("shared", "services", "weightflow")):
            continue
        for attr, value in list(vars(mod).items()):
            if value is original:
                setattr(mod, attr, replacement)


def _install() -> None:
    import importlib

    for module_name, names in MODEL_FUNCTIONS.items():
        module = importlib.import_module(module_name)
        for name in names:
            original = getattr(module, name)
            if getattr(original, "__wf_probe__", False):
                continue
            _rebind(original, _wrap_model(module_name, name, original))

    from shared import bus

    process = bus.Service._process
    run_periodic = bus.Service._run_periodic

    def probed_process(self: Any, spec: Any, event: Any) -> None:
        start = time.time()
        try:
            process(self, spec, event)
        finally:
            _write({"kind": "handler", "service": self.name, "event_type": event.type_name(),
                    "event_id": str(event.event_id), "run_id": str(event.run_id),
                    "causation_id": str(event.causation_id) if event.causation_id else None,
                    "occurred_at": event.occurred_at.timestamp(), "pid": os.getpid(), "start": start,
                    "end": time.time()})

    def probed_periodic(self: Any, fn: Any) -> None:
        start = time.time()
        try:
            run_periodic(self, fn)
        finally:
            end = time.time()
            if end - start > 0.02:  # the idle 1 s scheduler ticks would only add noise
                _write({"kind": "periodic", "service": self.name, "name": fn.__name__, "pid": os.getpid(),
                        "start": start, "end": end})

    bus.Service._process = probed_process  # type: ignore[method-assign]
    bus.Service._run_periodic = probed_periodic  # type: ignore[method-assign]


if _PATH:
    try:
        _install()
    except Exception as exc:  # a probe must never stop a service from starting
        sys.stderr.write(f"weightflow bench probe not installed: {exc!r}\n")
