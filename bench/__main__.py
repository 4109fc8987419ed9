"""`python -m bench`: run the comparisons, print one table each, write bench/results/<name>.json.

    python -m bench                       # everything but release_scale, full sizes (about 30 minutes on 2 busy cores)
    python -m bench --smoke               # tiny sizes, to check it still works
    python -m bench --only hashing,scale  # a subset
    python -m bench --only lm_schemes     # fp32/int8/w4a16/awq on SmolLM2-135M (about 3 minutes; needs
                                          # examples/language-models/make_models.py and setup-quantization)
    python -m bench --only service_start    # a service's start to ready, and the stack's (about a minute)
    python -m bench --only generation_throughput  # SmolLM2-135M's evaluation vs a plain generate loop (needs
                                          # examples/language-models/make_models.py)
    python -m bench --only hop_profile      # where an event hop's time goes, step by step (seconds)
    python -m bench --only canary_schedule  # scheduler tick cost vs deployments not due; claim lag (~2 min)
    python -m bench --only release_scale --baseline 69378cf  # runs/min of N concurrent runs, this checkout vs
                                          # that commit's services (a git worktree), one replica each (~15 min)
    python -m bench --reps 3 --out /tmp/results
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

COMPARISONS = ("eval_throughput", "orchestration", "hashing", "memory_budget", "quantization", "scale", "lm_schemes",
               "serving", "cluster", "artifact_store", "service_start", "generation_throughput",
               "hop_profile", "canary_schedule", "release_scale")
# Run only when named: release_scale checks out another commit (a shallow clone may not have it).
OPT_IN = ("release_scale",)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(COMPARISONS)}")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds per comparison, except stacks)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per measurement (default 5)")
    parser.add_argument("--out", type=Path, default=None, help="where the JSON goes (default bench/results)")
    parser.add_argument("--device", default=os.environ.get("WEIGHTFLOW_DEVICE", "auto"),
                        help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--baseline", default=None,
                        help="a commit: release_scale runs it (a git worktree) against this checkout")
    parser.add_argument("--keep-going", action="store_true", help="run the rest when one comparison fails")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or [n for n in COMPARISONS if n not in OPT_IN]
    unknown = sorted(set(names) - set(COMPARISONS))
    if unknown:
        parser.error(f"unknown comparison(s) {unknown}; choose from {', '.join(COMPARISONS)}")
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    args.names = names
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for key, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)

    from bench.harness import RESULTS_DIR, Config, machine_info, table, write_json

    cfg = Config(reps=args.reps, smoke=args.smoke, out=args.out or RESULTS_DIR, device=args.device,
                 baseline=args.baseline)
    machine = machine_info(cfg.device)
    print(f"# weightflow bench ({'smoke' if cfg.smoke else 'full'}, reps={cfg.reps}) on {machine['cpu_model']}, "
          f"{machine['cpu_cores']} cores, {machine['mem_total_gib']} GiB, torch {machine['torch']}, "
          f"device {machine['device']}", flush=True)
    failed = []
    for name in args.names:
        print(f"\n## {name} …", flush=True)
        started = time.time()
        before = machine_info(cfg.device)  # its load average shows what else was running as this began
        try:
            report = importlib.import_module(f"bench.{name}").run(cfg)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            if not args.keep_going:
                break
            continue
        finished = time.time()
        path = write_json(report, cfg, before, started, finished)
        print(table(report), flush=True)
        print(f"\n({finished - started:.0f} s; {path})", flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
