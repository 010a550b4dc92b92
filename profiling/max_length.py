"""Longest sequence that folds within a memory budget, by bisection over lengths, each probe in its
own process (peak RSS on CPU, CUDA max allocated on GPU).

    python profiling/max_length.py --budget-gb 8 --provider ours
    python profiling/max_length.py --budget-gb 8 --provider transformers --hi 2048
"""

from __future__ import annotations

import argparse
import json
import sys

from esmfold_fast.benchmarking.measure import (
    PointFailed,
    add_model_arguments,
    fold_spec,
    peak_memory_bytes,
    prepare_esmfold_checkpoint,
    run_point,
)
from esmfold_fast.config import named_config


def fits(ckpt, provider, L, budget, args) -> tuple[bool, dict]:
    spec = fold_spec(provider, ckpt, L, num_passes=args.passes, dtype=args.dtype, device=args.device)
    try:
        r = run_point(spec, timeout=args.timeout)
    except PointFailed as err:  # killed for memory, or too slow: does not fit
        return False, dict(L=L, error=str(err))
    peak = peak_memory_bytes(r)
    return peak <= budget, dict(L=L, peak_bytes=peak, seconds=r["median_s"])


def bisect(ckpt, provider, budget, args) -> tuple[int, list[dict]]:
    """Largest L in [lo, hi] (to ``--step`` residues) whose fold stays within ``budget`` bytes."""
    lo, hi, probes = args.lo, args.hi, []
    ok, rec = fits(ckpt, provider, lo, budget, args)
    probes.append(rec)
    if not ok:
        return 0, probes
    while hi - lo > args.step:
        mid = (lo + hi) // 2
        ok, rec = fits(ckpt, provider, mid, budget, args)
        probes.append(rec)
        print(f"L={mid:>6}: {'fits' if ok else 'over budget'} {rec}", flush=True)
        lo, hi = (mid, hi) if ok else (lo, mid)
    return lo, probes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-gb", type=float, required=True)
    ap.add_argument("--provider", default="ours", choices=["ours", "reference", "transformers"])
    ap.add_argument("--lo", type=int, default=64)
    ap.add_argument("--hi", type=int, default=4096)
    ap.add_argument("--step", type=int, default=32, help="stop when the bracket is this narrow")
    add_model_arguments(ap)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    ckpt = prepare_esmfold_checkpoint(named_config(args.config, num_blocks=args.num_blocks))
    best, probes = bisect(ckpt, args.provider, args.budget_gb * 2**30, args)
    print(f"{args.provider}: longest L within {args.budget_gb} GiB: {best} (to {args.step} residues)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(provider=args.provider, budget_gb=args.budget_gb, max_length=best, probes=probes,
                           config=args.config, num_blocks=args.num_blocks, dtype=args.dtype), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
