"""torch.profiler trace of one fold: a Chrome trace (open in chrome://tracing or Perfetto) and a printed
table of the most expensive ops.

    python profiling/trace.py --out trace.json --length 256
    python profiling/trace.py --out trace_hf.json --provider transformers --length 256
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from esmfold_fast.benchmarking.measure import add_model_arguments, build_fold, fold_spec, prepare_esmfold_checkpoint
from esmfold_fast.config import named_config


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="Chrome trace JSON to write")
    ap.add_argument("--provider", default="ours", choices=["ours", "reference", "transformers"])
    ap.add_argument("--length", type=int, default=128)
    add_model_arguments(ap)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    ckpt = prepare_esmfold_checkpoint(named_config(args.config, num_blocks=args.num_blocks))
    spec = fold_spec(args.provider, ckpt, args.length, num_passes=args.passes, dtype=args.dtype,
                     device=args.device)
    fold = build_fold(spec)
    activities = [ProfilerActivity.CPU]
    if spec["device"] == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with torch.inference_mode():
        fold()  # warm-up outside the trace
        with profile(activities=activities, record_shapes=True, profile_memory=True) as prof:
            fold()
            if spec["device"] == "cuda":
                torch.cuda.synchronize()
    prof.export_chrome_trace(args.out)
    key = "self_cuda_time_total" if spec["device"] == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.top))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
