"""Offload, the last resort of fitting: part of the weights on the target device, the rest elsewhere.

When no allowed quantization scheme fits the budget, fitting plans a placement (accelerate's `max_memory`: at most
`on_device_bytes` of weights on the target; the rest on disk for a CPU target, in host memory for a GPU) and writes
it into the variant's tree as `PLACEMENT_FILE`. Every loader goes through `shared.modeling.loading.load_checkpoint`,
which loads a tree holding that file with the same device map: the re-benchmark, the canary, the runbook's
`load_deployment` and `weightflow serve` all run the model exactly as fitting measured it, and the file is pinned
by the tree's checksum in the manifest.

On a CPU target the offloaded weights come back from memory-mapped files one module at a time: their pages are page
cache, which the kernel reclaims under a memory limit, so what the budget must hold is the anonymous memory (the
peak meter says so in its method). glibc's dynamic mmap threshold would keep every freed weight copy in the heap
(anonymous memory grew to the whole model in a probe: 711 MiB for SmolLM2-135M's 540 MB of weights); pinning the
threshold returns each copy to the kernel when the module is done (182 MiB growth in the same probe). The weights
the map keeps on the CPU are copied out of the file's mapping at load, so they count as the anonymous memory they
must stay.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

PLACEMENT_FILE = "weightflow-placement.json"
OFFLOAD_SUFFIX = "+offload"
# glibc's M_MMAP_THRESHOLD (malloc.h) and the value pinned for an offloaded model on CPU: glibc's initial default,
# which its dynamic adjustment raises up to 32 MiB as soon as a large block is freed.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 128 * 1024
HOST_MEMORY_BYTES = 1 << 40  # a GPU target's rest goes to host memory, which is not the budget's to bound


class Placement(BaseModel):
    """How a checkpoint's weights are split between the target device and the place the rest lives."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    device: Literal["cpu", "cuda"] = Field(description="the target's device type")
    on_device_bytes: int = Field(ge=0, description="at most this many bytes of weights on the target device")
    rest: Literal["disk", "cpu"] = Field(description="where the weights beyond it live: disk (a CPU target) or "
                                                     "host memory (a GPU target)")

    def describe(self) -> str:
        where = "in host memory" if self.rest == "cpu" else "on disk"
        return (f"offloaded: at most {self.on_device_bytes / 1e6:.1f} MB of weights on {self.device}, the rest "
                f"{where} (accelerate device map)")


def plan(device: str, room_bytes: int) -> Placement:
    """The placement for a target of `device` type that has `room_bytes` left for weights."""
    kind: Literal["cpu", "cuda"] = "cpu" if device == "cpu" else "cuda"
    return Placement(device=kind, on_device_bytes=max(0, int(room_bytes)), rest="disk" if kind == "cpu" else "cpu")


def offloaded(variant: str) -> str:
    """The variant name of `variant` offloaded: `fp32+offload`."""
    return variant + OFFLOAD_SUFFIX


def scheme_of(variant: str) -> str:
    """The quantization scheme (or `fp32`) under a variant name, offloaded or not."""
    return variant.removesuffix(OFFLOAD_SUFFIX)


def read(model_dir: Path) -> Placement | None:
    path = Path(model_dir) / PLACEMENT_FILE
    if not path.is_file():
        return None
    try:
        return Placement.model_validate_json(path.read_text())
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{path} is not a placement this release loads ({problems}); fitting writes it, so refit "
                         "the model rather than edit the file") from None


def write(model_dir: Path, placement: Placement) -> Path:
    path = Path(model_dir) / PLACEMENT_FILE
    path.write_text(placement.model_dump_json(indent=2) + "\n")
    return path


def pin_mmap_threshold() -> bool:
    """Make glibc hand freed large blocks back to the kernel at once (process-wide; False where there is no
    glibc). Only an offloaded model needs it, so only its loader calls it."""
    with contextlib.suppress(OSError, AttributeError):
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))
    return False


def max_memory(placement: Placement, device: Any) -> dict[Any, int]:
    """accelerate's `max_memory` for `placement` on the torch `device` it runs on."""
    if placement.device == "cpu" or getattr(device, "type", str(device)) == "cpu":
        return {"cpu": placement.on_device_bytes}
    return {(getattr(device, "index", None) or 0): placement.on_device_bytes, "cpu": HOST_MEMORY_BYTES}


def load(model_dir: Path, auto_class: Any, device: Any, placement: Placement) -> Any:
    """`auto_class` from `model_dir` under `placement`'s device map. The offload folder (weights accelerate writes
    for the modules it keeps on disk) lives as long as the model does."""
    import torch

    if placement.rest == "disk":
        pin_mmap_threshold()
    folder = tempfile.mkdtemp(prefix="wf-offload-")
    try:
        model = auto_class.from_pretrained(
            str(model_dir), local_files_only=True, use_safetensors=True, dtype=torch.float32,
            trust_remote_code=False, device_map="auto", max_memory=max_memory(placement, device),
            offload_folder=folder, offload_buffers=True)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    weakref.finalize(model, shutil.rmtree, folder, True)
    if placement.rest == "disk":
        _own_resident_weights(model)
    return model


def _own_resident_weights(model: Any) -> None:
    """Copy the weights the map keeps on the CPU out of the checkpoint's memory map. transformers leaves them as
    views of the mapped safetensors file: file pages the kernel may drop under a memory limit and read back on
    every forward, so a budget of anonymous memory (what the peak meter reads for an offloaded model) would not
    see them at all. Owned copies are what the placement grants the target; tied tensors stay tied."""
    copies: dict[int, Any] = {}
    for module in model.modules():
        for tensors in (module._parameters, module._buffers):
            for tensor in tensors.values():
                if tensor is None or tensor.device.type != "cpu":
                    continue  # on disk (meta until its module runs) or on a GPU
                key = tensor.data_ptr()
                if key not in copies:
                    copies[key] = tensor.data.clone()
                tensor.data = copies[key]
