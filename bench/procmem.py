"""Linux process memory readings the memory comparisons share: /proc status fields and a peak reset."""

from __future__ import annotations

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
