"""Linux process memory readings the memory comparisons share: /proc status fields and a peak reset."""

from __future__ import annotations

import contextlib
from pathlib import Path


def status_kib(field: str, pid: int | str = "self") -> float | None:
    """A kB field of /proc/<pid>/status (VmRSS, VmHWM, ...), or None where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0), so the peak is the next operation's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def require_kib(field: str) -> float:
    """`status_kib` for this process, where a missing field is an error (the measurement would be wrong)."""
    value = status_kib(field)
    if value is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return value


def require_reset_peak() -> None:
    if not reset_peak():
        raise RuntimeError("cannot reset the peak RSS: /proc/self/clear_refs is not writable")


def trimmed_rss_kib() -> float:
    """Resident size after glibc returns freed heap to the OS: what is live, not what the allocator kept."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return require_kib("VmRSS")
