"""Device selection, so every stage resolves "auto" the same way on laptops, CI and GPU hosts."""

from __future__ import annotations

import re

import torch

_CUDA = re.compile(r"^cuda(:\d+)?$")


def pick_device(preferred: str = "auto") -> torch.device:
    """Resolve a device name from configuration into a usable torch.device.

    "auto" prefers CUDA because every stage (benchmark, fitting, tuning) is faster there and the
    numbers stay comparable only when the same rule is applied everywhere. An explicit "cuda" on a
    host without one fails here, with the reason, instead of deep inside a forward pass.
    """
    name = preferred.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if _CUDA.match(name):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {preferred!r} was requested but torch sees no CUDA device")
        return torch.device(name)
    raise ValueError(f"unknown device {preferred!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
