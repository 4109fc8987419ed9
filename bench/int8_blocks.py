"""int8 weight-only generation against fp32, by the size of the block of weights turned to float per call.

    python -m bench.int8_blocks examples/language-models/orders.yaml examples/language-models/models/smollm2-135m

The requirements file's eval rows (the first 40), generated greedily in batches of 8 on one thread, by fp32 and by
the int8 variant at each block size (`int8_modules.CHUNK_ELEMENTS`), interleaved for three rounds in one process so
that load on the machine falls on every variant alike. Prints tokens/s (median of the rounds) and the ratio to
fp32; the answers of every int8 block size are checked to be identical. Rows go to bench/RESULTS.md §15 by hand.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

BLOCKS = (1 << 21, 1 << 18, 1 << 16)
ROWS, BATCH, ROUNDS = 40, 8, 3


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python -m bench.int8_blocks REQUIREMENTS.yaml MODEL_DIR")
    import torch

    from weightflow.contracts.requirements_doc import parse_requirements
    from weightflow.shared.modeling.device import pick_device
    from weightflow.shared.modeling.quantizers import int8_modules
    from weightflow.shared.modeling.registry import tasks

    torch.set_num_threads(1)
    yaml_path, model_dir = Path(argv[0]), Path(argv[1])
    req = parse_requirements(yaml_path.read_text())
    task = tasks.get(req.task.type)
    runtime: Any = task.runtime()
    lines = (yaml_path.parent / req.data.eval).read_text().splitlines()
    rows: list[Any] = [task.row.model_validate(json.loads(line)) for line in lines if line.strip()][:ROWS]
    fp32 = runtime.load(model_dir, pick_device("cpu"))
    int8 = runtime.load(model_dir, pick_device("cpu"))
    int8_modules.quantize_int8(int8.model)

    def tokens_per_s(loaded: Any) -> tuple[float, list[str]]:
        started, produced, answers = time.perf_counter(), 0, []
        for i in range(0, len(rows), BATCH):
            out, count = runtime.generate(loaded, req.task, [r.input for r in rows[i: i + BATCH]])
            produced += count
            answers += out
        return produced / (time.perf_counter() - started), answers

    variants: list[tuple[str, Any, int | None]] = [("fp32", fp32, None)]
    variants += [(f"int8, {block // 1024}K-element blocks", int8, block) for block in BLOCKS]
    speeds: dict[str, list[float]] = {}
    answers: dict[str, list[str]] = {}
    for _ in range(ROUNDS):
        for name, loaded, block in variants:
            if block is not None:
                int8_modules.CHUNK_ELEMENTS = block
            speed, said = tokens_per_s(loaded)
            speeds.setdefault(name, []).append(speed)
            answers[name] = said
    int8_answers = [a for name, a in answers.items() if name != "fp32"]
    assert all(a == int8_answers[0] for a in int8_answers), "the block size changed an int8 answer"
    base = statistics.median(speeds["fp32"])
    print(f"| variant | tokens/s (median of {ROUNDS}) | ratio to fp32 |")
    print("|---|---|---|")
    for name, values in speeds.items():
        print(f"| {name} | {statistics.median(values):.1f} | {statistics.median(values) / base:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
