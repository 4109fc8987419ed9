"""Fitting's prediction against the peak fitting now measures, and fp32 against int8 at the serving shape.

    python -m bench.fit_peaks generation examples/language-models/models/smollm2-135m [more dirs]
    python -m bench.fit_peaks zero-shot-classification DIR ...
    python -m bench.fit_peaks --schemes=w4a16 multiple-choice DIR ...   # reviews.yaml's serving shape (8 x 256)
    python -m bench.fit_peaks --schemes=int8,w4a16,awq generation DIR ...   # 4-bit: needs the quantization env
    python -m bench.fit_peaks --repeat=3 generation DIR ...   # three fresh processes a variant: median and range

For each model directory, fp32 and each scheme (default int8; quantized here, 4-bit ones by llmcompressor in its
own environment, calibrated on examples/language-models/general.jsonl): the budget fitting predicts
(`memory_budget` with the stored `*.safetensors` as weights, the task's serving context, the CPU calibration's
runtime and weight overhead, the scheme's working memory) and the peak `shared.modeling.peak.measure_peak`
measures in a fresh process (what fitting decides on), the relative error, and the serving batch's wall time
(8 requests at the serving context, generated token by token for generation). Prints one Markdown table; rows go
to bench/RESULTS.md by hand.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

MIB = 2**20
SPECS = {
    "generation": {"type": "generation", "prompt": "Message: {input}\nOrder number:", "max_new_tokens": 8},
    "multiple-choice": {"type": "multiple-choice", "length_normalise": True,
                        "prompt": "Review: Fantastic, works like a charm.\nSentiment: positive\nReview: {input}\n"
                                  "Sentiment:"},
    "zero-shot-classification": {"type": "zero-shot-classification",
                                 "labels": {"billing": "a billing question", "bug": "a software bug"}},
}


def main(argv: list[str]) -> None:
    schemes, repeat = ["int8"], 1
    while argv and argv[0].startswith("--"):
        flag, _, value = argv.pop(0).partition("=")
        if flag == "--schemes":
            schemes = [s for s in value.split(",") if s]
        elif flag == "--repeat":  # fresh processes per variant: the allocator's spread between identical runs
            repeat = int(value)
    if len(argv) < 2 or argv[0] not in SPECS:
        raise SystemExit(f"usage: python -m bench.fit_peaks [--schemes=int8,...] [--repeat=N] "
                         f"{{{','.join(SPECS)}}} MODEL_DIR [MODEL_DIR ...]")
    from weightflow.contracts.requirements import TaskSpec
    from weightflow.shared.modeling.budget import SERVING_BATCH, Architecture, calibrated_budget
    from weightflow.shared.modeling.device import pick_device
    from weightflow.shared.modeling.peak import measure_peak
    from weightflow.shared.modeling.registry import quantizers, tasks

    spec = TaskSpec.model_validate(SPECS[argv[0]])
    task = tasks.get(spec.type)
    print("| model | variant | weights on disk MiB | predicted MiB | measured peak MiB, median [range] (load / serve) "
          "| error | serving batch s |")
    print("|---|---|---|---|---|---|---|")
    for directory in map(Path, argv[1:]):
        arch = Architecture.from_config(json.loads((directory / "config.json").read_text()))
        params = _params(directory)
        with tempfile.TemporaryDirectory(prefix="wf-fit-peaks-") as tmp:
            variants = [("fp32", directory)]
            for scheme in schemes:
                variants.append((scheme, quantizers.get(scheme).quantize(
                    task, directory, Path(tmp) / scheme, spec, _calibration(), pick_device("cpu"))))
            base_s = 0.0
            for variant, path in variants:
                weights = sum(p.stat().st_size for p in path.glob("*.safetensors"))
                seq = task.serving_context(spec)
                working = quantizers.get(variant).working_bytes(arch, SERVING_BATCH, seq) if variant != "fp32" else 0
                predicted = calibrated_budget(variant, params, arch, 1, device="cpu", seq=seq, weight_bytes=weights,
                                              file_sizes={p.name: p.stat().st_size for p in path.iterdir()},
                                              working_bytes=working)
                peaks = sorted((measure_peak(path, spec, "cpu") for _ in range(repeat)), key=lambda p: p.peak_bytes)
                peak = peaks[len(peaks) // 2]  # the median run
                spread = (f" [{peaks[0].peak_bytes / MIB:.0f}-{peaks[-1].peak_bytes / MIB:.0f}]"
                          if repeat > 1 else "")
                error = (predicted.total_bytes - peak.peak_bytes) / peak.peak_bytes
                base_s = base_s or peak.serve_s
                print(f"| {directory.name} | {variant} | {weights / MIB:.1f} | {predicted.total_bytes / MIB:.1f} | "
                      f"{peak.peak_bytes / MIB:.1f}{spread} ({peak.load_peak_bytes / MIB:.1f} / "
                      f"{peak.serve_peak_bytes / MIB:.1f}) | {error:+.1%} | {peak.serve_s:.2f} "
                      f"({peak.serve_s / base_s:.2f}x fp32) |", flush=True)


def _calibration() -> list[SimpleNamespace]:
    """Plain prose rows (what the 4-bit schemes calibrate on; int8 ignores them)."""
    path = Path(__file__).parents[1] / "examples" / "language-models" / "general.jsonl"
    return [SimpleNamespace(text=json.loads(line)["text"]) for line in path.read_text().splitlines() if line.strip()]


def _params(directory: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in directory.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                total += _numel(f.get_slice(name).get_shape())
    return total


def _numel(shape: list[int]) -> int:
    out = 1
    for n in shape:
        out *= n
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
