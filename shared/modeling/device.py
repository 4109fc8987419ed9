"""Device selection, so every stage resolves "auto" the same way on laptops, CI and GPU hosts.

torch is imported when a device is picked, not when this module is: services import this at start, and a torch
import costs them a second or more of CPU before they take their first event (issue 26, fast start).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_CUDA = re.compile(r"^cuda(:\d+)?$")


def pick_device(preferred: str = "auto") -> torch.device:
    """Resolve a device name from configuration into a usable torch.device.

    "auto" prefers CUDA because every stage (benchmark, fitting, tuning) is faster there and the
    numbers stay comparable only when the same rule is applied everywhere. An explicit "cuda" on a
    host without one fails here, with the reason, instead of deep inside a forward pass.
    """
    import torch

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
