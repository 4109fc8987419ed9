"""Issue 26, target 2: N concurrent trivial runs through this checkout's stack against a previous release's, in
one invocation on the same machine.

The previous release is a commit (`--baseline`, default `PREVIOUS_RELEASE`) checked out in a git worktree; its
services run from it (PYTHONPATH first, in this virtual environment), while nats-server, the client that submits
and follows the runs, and the workload are this checkout's. One replica of every service on each side; the same
trivial workload as `bench.scale` (minilm-l3, eval 64 rows, canary 32, fp32 fits, no tuning), each stack warmed up
by one unrecorded run first. Per-run latency at N=1 is the per-run overhead's upper bound (the trivial model's
work is a small part of it).
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.harness import Config, Report
from bench.scale import add_level_rows, levels, measure_stack

NAME = "release_scale"
# The last commit before fitting kept measured peaks (services/fitting/peaks.py): every run of a model measured
# its peak in a fresh interpreter.
PREVIOUS_RELEASE = "69378cf"
ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def worktree(commit: str, dest: Path) -> Iterator[Path]:
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(dest), commit], cwd=ROOT, check=True)
    try:
        yield dest
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(dest)], cwd=ROOT, check=False)


def run(cfg: Config) -> Report:
    baseline = cfg.baseline or PREVIOUS_RELEASE
    commit = subprocess.run(["git", "rev-parse", "--short", baseline], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    report = Report(NAME, f"Issue 26 target 2: N concurrent trivial runs, this checkout vs release {commit}")
    with tempfile.TemporaryDirectory(prefix="wf-bench-release-") as tmp_name:
        tmp = Path(tmp_name)
        # The worktree as the working folder too: `python -m` puts it before PYTHONPATH, and this checkout's own
        # folder there would run this checkout's services on both sides.
        with worktree(commit, tmp / "baseline") as tree, contextlib.chdir(tree):
            old = measure_stack(cfg, tmp, 1, env={"PYTHONPATH": str(tree)}, label="-baseline")
        new = measure_stack(cfg, tmp, 1, label="-current")
    add_level_rows(report, cfg, new, old, f"release {commit}", lambda n: "one replica per service on both sides",
                   names=("current", "baseline"))
    report.config = {"levels": levels(cfg), "baseline": commit, "replicas": 1,
                     "workload": "trivial: minilm-l3 only, eval 64 rows, canary 32 rows, fp32 fits, no tuning"}
    report.notes.append("Both stacks run one after the other on the same cores; the baseline's services import its "
                        "worktree first (PYTHONPATH), with this virtual environment's libraries.")
    return report
