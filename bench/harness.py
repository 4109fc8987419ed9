"""What every comparison shares: repetitions, robust statistics, rows, tables, JSON with machine info.

A comparison returns a :class:`Report` of :class:`Row` objects. Each row holds the weightflow side and,
where one exists, the baseline side as :class:`Stat` (all samples, median, quartiles, min/max), plus the
ratio weightflow / baseline of the medians and which direction is better for that metric.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_DIR = ROOT / "examples" / "support-tickets"
RESULTS_DIR = Path(__file__).resolve().parent / "results"

Better = Literal["higher", "lower", "none"]


@dataclass(frozen=True)
class Config:
    """How a bench invocation is sized: `smoke` shrinks every workload to seconds."""

    reps: int = 5
    smoke: bool = False
    out: Path = RESULTS_DIR
    device: str = "auto"
    baseline: str | None = None  # a commit: comparisons against a previous release build it in a git worktree


@dataclass
class Stat:
    samples: list[float]
    median: float
    p25: float
    p75: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stat:
        values = [float(v) for v in samples]
        if not values:
            raise ValueError("a statistic needs at least one sample")
        return cls(samples=values, median=statistics.median(values), p25=percentile(values, 25),
                   p75=percentile(values, 75), min=min(values), max=max(values), n=len(values))

    def spread(self) -> str:
        """IQR when there are enough samples to make one, else the full range."""
        if self.n >= 4:
            return f"IQR {fmt(self.p25)}–{fmt(self.p75)}"
        if self.n > 1:
            return f"range {fmt(self.min)}–{fmt(self.max)}"
        return "n=1"


@dataclass
class Row:
    metric: str
    unit: str
    weightflow: Stat | None
    baseline: Stat | None = None
    baseline_name: str = ""
    better: Better = "none"
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.weightflow is None or self.baseline is None or self.baseline.median == 0:
            return None
        return self.weightflow.median / self.baseline.median

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = self.ratio
        return out


@dataclass
class Report:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), without needing numpy here."""
    ordered = sorted(float(v) for v in values)
    if not ordered:
        raise ValueError("percentile of no values")
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def union_length(intervals: Sequence[tuple[float, float]], lo: float, hi: float) -> float:
    """Total length covered by `intervals` inside [lo, hi]; overlaps (parallel processes) count once."""
    clipped = sorted((max(a, lo), min(b, hi)) for a, b in intervals if b > lo and a < hi)
    total, cur_a, cur_b = 0.0, None, None
    for a, b in clipped:
        if cur_b is None or a > cur_b:
            if cur_a is not None and cur_b is not None:
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_a is not None and cur_b is not None:
        total += cur_b - cur_a
    return total


def interleave(fns: Sequence[Callable[[], float | None]], reps: int, warmup: int = 1) -> list[list[float]]:
    """Run each side `warmup` times unrecorded, then `reps` rounds alternating the sides, so drifting machine
    load (another process on the same cores) hits every side alike instead of whichever ran last. Each call
    returns its own measurement, or None to have its wall time in seconds recorded."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            value = fn()
            samples[i].append(time.perf_counter() - start if value is None else float(value))
    return samples


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    if magnitude >= 0.01:
        return f"{value:.3f}"
    return f"{value:.2e}"


def _cell(stat: Stat | None) -> str:
    if stat is None:
        return "—"
    return f"{fmt(stat.median)} ({stat.spread()})"


def table(report: Report) -> str:
    """A Markdown table (readable in a terminal as well) of one comparison's rows."""
    header = ["metric", "unit", "weightflow median (spread)", "baseline", "baseline median (spread)",
              "ratio wf/base", "better", "note"]
    lines = [f"### {report.title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report.rows:
        ratio = "—" if row.ratio is None else f"{row.ratio:.3f}"
        cells = [row.metric, row.unit, _cell(row.weightflow), row.baseline_name or "—", _cell(row.baseline),
                 ratio, row.better, row.note]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    if report.notes:
        lines.append("")
        lines.extend(f"- {note}" for note in report.notes)
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def machine_info(device: str = "auto") -> dict[str, Any]:
    """What the numbers ran on; the load average shows whether something else shared the cores."""
    import torch
    import transformers

    from weightflow.shared.modeling.device import pick_device

    resolved = pick_device(device)
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_total_gib": _mem_total_gib(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "device": str(resolved),
        "gpu": torch.cuda.get_device_name(resolved) if resolved.type == "cuda" else None,
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    return info


def write_json(report: Report, cfg: Config, machine: dict[str, Any], started: float, finished: float) -> Path:
    cfg.out.mkdir(parents=True, exist_ok=True)
    path = cfg.out / f"{report.name}.json"
    doc = {
        "name": report.name,
        "title": report.title,
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
        "duration_s": round(finished - started, 3),
        "config": {"reps": cfg.reps, "smoke": cfg.smoke, "device": cfg.device, **report.config},
        "machine": {**machine, "loadavg_after": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "rows": [row.to_json() for row in report.rows],
        "notes": report.notes,
    }
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path


def bench_env() -> dict[str, str]:
    """Environment for child processes: offline model loading, quiet tokenizers."""
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 300, poll_s: float = 0.2) -> None:
    """Until `url`/readyz answers 200 (a service or `weightflow serve` started by a bench); raises if the process
    exits first or the time runs out."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before it was ready")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        time.sleep(poll_s)
    raise TimeoutError(f"{proc.args!r} was not ready in {timeout:.0f} s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """SIGTERM, then SIGKILL when it has not exited within `timeout`."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
