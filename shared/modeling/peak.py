"""A variant's peak memory at the serving shape, measured in a process of its own.

Fitting decides on this number, not on the prediction (bench/RESULTS.md §7 found the prediction wrong by
half for int8 and the 4-bit schemes). The child process loads the variant exactly as serving does
(`Task.load`), warms it up, then runs one batch at the shape the budget plans for: `SERVING_BATCH`
requests of the task's `serving_context` tokens, generated token by token when the task generates.
The peak is the growth over the process as it stood with torch and transformers imported (the budget's
`runtime_bytes` covers what serving adds beyond weights and activations, not the interpreter): VmHWM
after a `clear_refs` reset on CPU, `torch.cuda.max_memory_allocated` on CUDA (which never sees the CUDA
context). A process of its own, because a peak is a property of a process: one that already loaded
other models holds freed pages and allocator caches that would hide or inflate it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

import weightflow
from weightflow.contracts.requirements import TaskSpec
from weightflow.shared.modeling.budget import SERVING_BATCH

CHILD_TIMEOUT_S = 1800.0
# The measuring code's revision: part of the key a measured peak is kept under (services/fitting/peaks.py). Raise it
# when what is measured changes (the meter, the serving shape, how a variant loads).
PEAK_METHOD = 2
# The folder that holds the `weightflow` package (a checkout's root, or site-packages), first on the child's path:
# it adds weightflow itself and nothing that could shadow a package of the user's (the old parents[2] was
# site-packages/weightflow in an installed wheel, which put weightflow's `shared` and `contracts` first).
_ROOT = Path(weightflow.__file__).resolve().parent.parent


class PeakRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_dir: Path
    spec: TaskSpec
    device: str = "cpu"
    batch: int = Field(default=SERVING_BATCH, ge=1)


class PeakMeasured(BaseModel):
    """What the child measured, in bytes and seconds."""

    model_config = ConfigDict(extra="forbid")

    peak_bytes: int = Field(description="max growth over load, warm-up and the serving batch")
    load_peak_bytes: int
    serve_peak_bytes: int
    device: str = Field(description="where it was measured: cpu, cuda or cuda:N")
    method: str
    batch: int
    context: int = Field(description="tokens per request at the serving shape (prompt + generated)")
    new_tokens: int = Field(description="tokens generated per request (0: one forward pass)")
    serve_s: float = Field(description="wall time of the serving batch (the latency the shape costs)")

    def describe(self) -> str:
        return (
            f"measured peak {self.peak_bytes / 2**20:.1f} MiB on {self.device} ({self.batch} x {self.context} "
            f"tokens, {self.new_tokens} generated; {self.serve_s:.2f} s)"
        )


def new_tokens(task: Any, spec: TaskSpec) -> int:
    """Tokens a request generates at serving time: a task whose serving context grows with
    `max_new_tokens` generates them; any other scores its context in one forward pass."""
    grown = task.serving_context(spec.model_copy(update={"max_new_tokens": spec.max_new_tokens + 1}))
    return spec.max_new_tokens if grown > task.serving_context(spec) else 0


def measure_peak(
    model_dir: Path,
    spec: TaskSpec,
    device: str = "cpu",
    *,
    batch: int = SERVING_BATCH,
    timeout_s: float = CHILD_TIMEOUT_S,
) -> PeakMeasured:
    """Run the measurement in a fresh interpreter; a child that fails raises with its stderr's tail."""
    request = PeakRequest(
        model_dir=Path(model_dir), spec=spec, device=device, batch=batch)
    # The caller's working folder, as a service started with `python -m` has it (a team's plugin module may live
    # there), with this package importable; the child's temporary files (an offload folder) live in a folder
    # removed here, however the child ends (a timeout kills it before its own cleanup could run).
    path = os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    with tempfile.TemporaryDirectory(prefix="wf-peak-") as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "weightflow.shared.modeling.peak", request.model_dump_json()],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            env={**os.environ, "PYTHONPATH": path, "TMPDIR": tmp},
        )
    if proc.returncode != 0:
        raise RuntimeError(
            f"measuring the peak memory of {model_dir} failed (exit {proc.returncode}): {proc.stderr[-2000:]}"
        )
    return PeakMeasured.model_validate_json(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------- child side


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}: the peak cannot be measured on this system")


class _Meter:
    """Peak growth since `start`: the allocator's counters on CUDA, VmRSS/VmHWM on CPU."""

    def __init__(self, device: Any) -> None:
        import torch

        self.torch, self.device = torch, device
        self.cuda = device.type == "cuda"
        self.method = "torch.cuda.max_memory_allocated" if self.cuda else "VmHWM growth (clear_refs reset)"
        self.base = 0

    def reset(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
            self.torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError as exc:
            raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs is not writable)") from exc

    def now(self) -> int:
        if self.cuda:
            return int(self.torch.cuda.memory_allocated(self.device))
        return _status_kib("VmRSS") * 1024

    def peak(self) -> int:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
            return int(self.torch.cuda.max_memory_allocated(self.device)) - self.base
        return _status_kib("VmHWM") * 1024 - self.base

    def start(self) -> None:
        self.reset()
        self.base = self.now()


class _AnonMeter(_Meter):
    """Peak anonymous memory for a model offloaded to disk on CPU, sampled every millisecond: its weights come
    back as memory-mapped file pages, which VmHWM counts but the kernel reclaims under a memory limit (page
    cache), so the memory the budget must hold is the anonymous part. Sampling can miss a spike shorter than
    the interval; the module-by-module copies it is after last a module's forward."""

    def __init__(self, device: Any) -> None:
        super().__init__(device)
        self.method = "RssAnon peak, sampled every 1 ms (disk-offloaded weights are reclaimable file pages)"
        self.high = 0
        self._lock = threading.Lock()  # a reset must not be undone by a sample taken before it
        threading.Thread(target=self._sample, name="anon-meter", daemon=True).start()

    def _sample(self) -> None:
        while True:
            time.sleep(0.001)
            with self._lock:
                self.high = max(self.high, self.now())

    def now(self) -> int:
        return _status_kib("RssAnon") * 1024

    def reset(self) -> None:
        with self._lock:
            self.high = self.now()

    def peak(self) -> int:
        with self._lock:
            self.high = max(self.high, self.now())
            return self.high - self.base


# Positions a multiple-choice pass projects onto the vocabulary at the serving shape: a choice of a few tokens
# (LanguageTask.continuation_logprobs keeps the continuation's positions only).
SCORED_POSITIONS = 8


def _serve(loaded: Any, request: PeakRequest, context: int, generate: int) -> float:
    """One batch at the serving shape; token ids drawn with a fixed seed (what they say does not change
    the memory a shape takes)."""
    import torch

    from weightflow.shared.modeling.tasks.language_runtime import keeps_logits

    model = loaded.model
    vocab = int(getattr(model.config, "vocab_size", 0) or len(loaded.tokenizer))
    prompt = max(1, context - generate)
    ids = torch.randint(0, vocab, (request.batch, prompt), generator=torch.Generator().manual_seed(0))
    device = loaded.device  # under a device map the first parameter may sit on disk (meta)
    ids = ids.to(device)
    mask = torch.ones_like(ids)
    started = time.perf_counter()
    with torch.inference_mode():
        if generate:
            pad = loaded.tokenizer.pad_token_id
            pad = loaded.tokenizer.eos_token_id if pad is None else pad
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=generate,
                min_new_tokens=generate,
                do_sample=False,
                pad_token_id=pad,
            )
        elif keeps_logits(model):  # a causal LM scoring choices: the continuation's logits only, as scoring does
            out = model(input_ids=ids, attention_mask=mask, logits_to_keep=SCORED_POSITIONS)
            out = torch.log_softmax(out.logits.float(), dim=-1)  # and its log-softmax, as large again
        else:
            out = model(input_ids=ids, attention_mask=mask)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - started
    del out
    return elapsed


def _preload(model_dir: Path) -> None:
    """Import the code loading will need before the base reading (transformers imports a model class,
    the tokenizer's and compressed-tensors lazily, ~100 MiB of modules): the peak is the model's, as
    bench/lm_schemes measures it, and the interpreter's share is the same for every variant."""
    import contextlib

    import transformers

    from weightflow.shared.modeling.quantizers import int8_modules  # noqa: F401

    with contextlib.suppress(ImportError):
        import compressed_tensors  # noqa: F401
        from transformers.quantizers import quantizer_compressed_tensors  # noqa: F401
    from weightflow.shared.modeling.placement import PLACEMENT_FILE

    if (Path(model_dir) / PLACEMENT_FILE).is_file():
        import accelerate  # noqa: F401  (an offloaded model loads through its device map)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    for name in [*(config.get("architectures") or []), "AutoModel", "AutoTokenizer", "PreTrainedTokenizerFast"]:
        with contextlib.suppress(AttributeError, ImportError):
            getattr(transformers, name)


def _child(request: PeakRequest) -> PeakMeasured:
    import torch
    import transformers  # noqa: F401  (imported before the base reading: the runtime, not the model)

    from weightflow.shared.modeling import (
        loading,  # noqa: F401  (registers the quantizers the loader detects)
        placement,
    )
    from weightflow.shared.modeling.device import pick_device
    from weightflow.shared.modeling.registry import load_plugins, tasks

    load_plugins(os.environ.get("WEIGHTFLOW_PLUGINS", ""))  # a team's own task, as the service that asked has it
    _preload(request.model_dir)
    torch.set_grad_enabled(False)
    task = tasks.get(request.spec.type)
    device = pick_device(request.device)
    context = task.serving_context(request.spec)
    generate = new_tokens(task, request.spec)
    placed = placement.read(request.model_dir)
    meter = _AnonMeter(device) if placed is not None and placed.rest == "disk" and device.type == "cpu" \
        else _Meter(device)
    meter.start()
    loaded = task.runtime().load(request.model_dir, device)
    load_peak = meter.peak()
    meter.reset()
    _serve(loaded, request.model_copy(update={"batch": 1}), 8 + generate, min(generate, 1))  # touch every weight
    warm_peak = meter.peak()
    meter.reset()
    serve_s = _serve(loaded, request, context, generate)
    serve_peak = meter.peak()
    return PeakMeasured(
        peak_bytes=max(load_peak, warm_peak, serve_peak),
        load_peak_bytes=load_peak,
        serve_peak_bytes=serve_peak,
        device=str(device),
        method=meter.method,
        batch=request.batch,
        context=context,
        new_tokens=generate,
        serve_s=serve_s,
    )


def _exit_with_parent(poll_s: float = 1.0) -> None:
    """End this child when the service that asked is gone (killed by its supervisor): nothing else would, and a
    measurement holds a whole model's memory for up to CHILD_TIMEOUT_S."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python -m weightflow.shared.modeling.peak '<PeakRequest JSON>'")
    _exit_with_parent()
    measured = _child(PeakRequest.model_validate(json.loads(argv[0])))
    print(measured.model_dump_json())


if __name__ == "__main__":
    main(sys.argv[1:])
