"""Speed and peak memory of ``esmfold_fast.accelerate(model)`` on every supported class, as ratios from one run.

Time: one process, one model object per case, original and accelerated alternating (``restore`` between),
one warm-up each, median of ``--rounds``; memory: each side's one-call peak RSS in a fresh process. See
:mod:`esmfold_fast.benchmarking.dropin`.

    python profiling/accelerate_report.py --json benchmarks/results/cpu-accelerate-$(date +%F).json \\
        --md benchmarks/results/cpu-accelerate-$(date +%F).md
    python profiling/accelerate_report.py --classes ESM2 EsmModel --lengths 512 1024 --lm 150M --no-memory
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from esmfold_fast.benchmarking import dropin as D
from esmfold_fast.benchmarking.measure import PointFailed, machine_info, measure_matmul_peak


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", nargs="+", default=list(D.CLASSES), choices=D.CLASSES)
    ap.add_argument("--lengths", nargs="+", type=int, default=[128, 256, 512, 1024], help="LM classes")
    ap.add_argument("--lm", default="35M", choices=list(D.LM_SIZES), help="ESM-2 size of the LM classes")
    ap.add_argument("--fold-length", type=int, default=256)
    ap.add_argument("--fold-lm", default="8M", choices=list(D.LM_SIZES), help="the folding model's LM")
    ap.add_argument("--max-recycles", type=int, default=4, help="folding trunk (infer runs this + 1 passes)")
    ap.add_argument("--rounds", type=int, default=3, help="timed calls per side (LM classes)")
    ap.add_argument("--fold-rounds", type=int, default=3, help="timed calls per side (folding)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-memory", action="store_true", help="skip the per-process peak-memory points")
    ap.add_argument("--keep-denormals", action="store_true",
                    help="do not flush denormals (random weights make the original trunk ~4x slower then)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    if not args.keep_denormals:
        D.flush_denormals_process_wide()  # before the first parallel op, so the intra-op workers inherit it
    cases = [c for c in D.default_cases(args.lm, tuple(args.lengths), args.fold_length, args.fold_lm,
                                        args.max_recycles) if c.cls in args.classes]
    info = machine_info()
    info["matmul_peak_gflops_before"] = measure_matmul_peak("cpu") / 1e9
    t0 = time.time()
    times, memory = [], []
    for case in cases:
        rounds = args.fold_rounds if case.cls == "EsmForProteinFolding" else args.rounds
        r = D.time_case(case, rounds=rounds, log=lambda s: print(s, flush=True),
                        flush_denormal=not args.keep_denormals).to_dict()
        print(f"{case.describe()}: {r['speedup']:.2f}x (max |diff| {r['max_abs_diff']:.2e})", flush=True)
        times.append(r)
        if not args.no_memory:
            try:
                m = D.memory_case(case, args.threads, flush_denormal=not args.keep_denormals)
            except PointFailed as err:
                print(f"  memory FAILED: {err}", flush=True)
                continue
            print(f"  memory: RSS original {m['original']['forward_peak_bytes'] / 2**20:.1f} MiB, accelerated "
                  f"{m['accelerated']['forward_peak_bytes'] / 2**20:.1f} MiB: {m['ratio']:.2f}; allocator "
                  f"{m['original']['allocator_peak_bytes'] / 2**20:.1f} / "
                  f"{m['accelerated']['allocator_peak_bytes'] / 2**20:.1f} MiB: {m['allocator_ratio']:.2f}", flush=True)
            memory.append(m)
    info["matmul_peak_gflops_after"] = measure_matmul_peak("cpu") / 1e9
    info["wall_s"] = time.time() - t0
    table = D.markdown_table(times, memory)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=info, args=vars(args), times=times, memory=memory), f, indent=1)
    if args.md:
        with open(args.md, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
