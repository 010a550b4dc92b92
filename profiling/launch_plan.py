"""Launches per trunk block and the analytic peak memory of a fold, per backend and dtype, at any length.

Nothing is computed: the model runs on the meta device with Triton launches counted instead of run
(``esmfold_fast.benchmarking.launches`` and ``.memory_model``), so esmfold_v1 at L=2700 takes seconds on a
laptop. ``--free-gib`` is the device memory free when a fold starts (an 80 GB H100 with the weights loaded
has about 70), which the fused path's launch plan sizes its chunks by.

    python profiling/launch_plan.py                       # L = 512 1024 2048 2700, all backends, fp32 and bf16
    python profiling/launch_plan.py --lengths 384 --json benchmarks/results/launch-plan.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # kernels are counted, never run: no GPU needed

import torch  # noqa: E402

from esmfold_fast.benchmarking.launches import count_block_launches  # noqa: E402
from esmfold_fast.benchmarking.memory_model import GIB, fold_peak  # noqa: E402
from esmfold_fast.config import named_config  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def rows(lengths, backends, dtypes, free_gib, config):
    for L in lengths:
        for backend in backends:
            for name in dtypes:
                dtype = DTYPES[name]
                free = int(free_gib * GIB)
                launches = count_block_launches(L, config.trunk, backend, dtype, free)
                peak = fold_peak(L, config, backend, dtype, free_bytes=free)
                yield {"L": L, "backend": backend, "dtype": name, "free_gib": free_gib, **launches, **peak}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 2700])
    ap.add_argument("--backends", nargs="+", default=["triton", "torch"], choices=["triton", "torch", "reference"])
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    ap.add_argument("--free-gib", type=float, default=70.0, help="device memory free when the fold starts")
    ap.add_argument("--config", default="esmfold_v1")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    config = named_config(args.config)
    print(f"{args.config}, one trunk block's op calls and Triton launches (no_grad), and one fold's peak "
          f"(one pass, lean outputs) with {args.free_gib:g} GiB free; GiB")
    print(f"{'L':>5} {'backend':>8} {'dtype':>5} {'LN':>6} {'tri-att':>7} {'trimul':>6} {'kernels':>7} "
          f"{'weights':>7} {'activ.':>7} {'total':>7} {'z':>6}")
    out = []
    for row in rows(args.lengths, args.backends, args.dtypes, args.free_gib, config):
        out.append(row)
        print(f"{row['L']:>5} {row['backend']:>8} {row['dtype']:>5} {row['layer_norm']:>6} "
              f"{row['triangle_attention']:>7} {row['triangle_multiplicative_update']:>6} {row['kernels']:>7} "
              f"{row['weights']:>7.2f} {row['activations']:>7.2f} {row['total']:>7.2f} {row['pair_state']:>6.2f}",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config, "free_gib": args.free_gib, "rows": out}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
