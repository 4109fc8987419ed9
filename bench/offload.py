"""Offload, fitting's last resort: memory and serving time against the whole model, at the serving shape.

    python -m bench.offload generation examples/language-models/models/smollm2-135m 0 100 200
    python -m bench.offload --repeat=3 generation DIR 0 150

For each amount of weights kept on the device (MB; the rest on disk, accelerate's device map, as fitting writes
it into an offloaded variant's tree), the peak `shared.modeling.peak.measure_peak` measures in a fresh process (for
a disk offload: anonymous memory, sampled; the offloaded weights are reclaimable file pages) and the serving
batch's wall time; the whole model is measured the same way first, in the same invocation, as the baseline of
both ratios. Prints one Markdown table; rows go to bench/RESULTS.md by hand.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench.fit_peaks import SPECS

MIB = 2**20


def main(argv: list[str]) -> None:
    repeat = 1
    while argv and argv[0].startswith("--"):
        flag, _, value = argv.pop(0).partition("=")
        if flag == "--repeat":
            repeat = int(value)
    if len(argv) < 3 or argv[0] not in SPECS:
        raise SystemExit(f"usage: python -m bench.offload [--repeat=N] {{{','.join(SPECS)}}} MODEL_DIR MB [MB ...]")
    from weightflow.contracts.requirements import TaskSpec
    from weightflow.shared.modeling import placement
    from weightflow.shared.modeling.peak import PeakMeasured, measure_peak

    spec = TaskSpec.model_validate(SPECS[argv[0]])
    source = Path(argv[1])

    def measured(model_dir: Path) -> tuple[float, float, float, float, str]:
        runs: list[PeakMeasured] = [measure_peak(model_dir, spec, "cpu") for _ in range(repeat)]
        peaks = [r.peak_bytes / MIB for r in runs]
        times = [r.serve_s for r in runs]
        return statistics.median(peaks), min(peaks), max(peaks), statistics.median(times), runs[0].method

    whole = measured(source)
    print("| weights kept on cpu | measured peak MiB, median [range] | vs whole | serving batch s | vs whole "
          "| method |")
    print("|---|---|---|---|---|---|")
    print(f"| all (whole model) | {whole[0]:.1f} [{whole[1]:.1f}–{whole[2]:.1f}] | 1.00× | {whole[3]:.2f} | 1.00× | "
          f"{whole[4]} |")
    for mb in map(int, argv[2:]):
        with tempfile.TemporaryDirectory(prefix="wf-bench-offload-") as tmp:
            model_dir = Path(tmp) / "model"
            shutil.copytree(source, model_dir)
            placement.write(model_dir, placement.plan("cpu", mb * 10**6))
            peak, low, high, serve_s, method = measured(model_dir)
        print(f"| at most {mb} MB, the rest on disk | {peak:.1f} [{low:.1f}–{high:.1f}] | {peak / whole[0]:.2f}× | "
              f"{serve_s:.2f} | {serve_s / whole[3]:.2f}× | {method} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
