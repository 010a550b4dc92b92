"""Peak memory of one fold against sequence length, each point in its own process.

CPU: the child's peak RSS; CUDA: ``torch.cuda.max_memory_allocated``. Same random weights for every
provider (8M LM + one full-width trunk block + default structure module unless told otherwise).

    python profiling/memory_vs_length.py --json benchmarks/results/memory_cpu.json \\
        --png benchmarks/results/memory_cpu.png --lengths 128 256 384 512 640 768 1024 \\
        --providers ours reference transformers
"""

from __future__ import annotations

import argparse
import json
import sys

from esmfold_fast.benchmarking.measure import (
    PointFailed,
    add_model_arguments,
    fold_spec,
    growth_exponent,
    machine_info,
    peak_memory_bytes,
    prepare_esmfold_checkpoint,
    run_point,
)
from esmfold_fast.config import named_config


def measure(providers, lengths, config, num_blocks, passes, dtype, device, timeout):
    ckpt = prepare_esmfold_checkpoint(named_config(config, num_blocks=num_blocks))
    points = []
    for L in lengths:
        for provider in providers:
            spec = fold_spec(provider, ckpt, L, num_passes=passes, dtype=dtype, device=device)
            try:
                r = run_point(spec, timeout=timeout)
            except PointFailed as err:  # out of memory or too slow: recorded, the sweep goes on
                print(f"{provider:>12} L={L:>5}: FAILED ({err})", flush=True)
                points.append(dict(provider=provider, L=L, error=str(err)))
                continue
            before = r.get("cuda_before_bytes", r["rss_before_bytes"])
            point = dict(provider=provider, L=L, peak_bytes=peak_memory_bytes(r),
                         forward_bytes=peak_memory_bytes(r) - before, seconds=r["median_s"],
                         kind="cuda_max_allocated" if "cuda_peak_bytes" in r else "peak_rss")
            points.append(point)
            print(f"{provider:>12} L={L:>5}: peak {point['peak_bytes'] / 2**30:7.3f} GiB "
                  f"(fold {point['forward_bytes'] / 2**30:7.3f} GiB) {point['seconds']:8.2f} s", flush=True)
    return points


def exponents(points) -> dict:
    out = {}
    for provider in {p["provider"] for p in points}:
        ok = [p for p in points if p["provider"] == provider and "error" not in p and p["forward_bytes"] > 0]
        if len(ok) >= 2:
            out[provider] = growth_exponent([p["L"] for p in ok], [p["forward_bytes"] for p in ok])
    return out


def plot(points, path, title) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'esmfold-fast[plot]'): no PNG written", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for provider in sorted({p["provider"] for p in points}):
        ok = [p for p in points if p["provider"] == provider and "error" not in p]
        ax.plot([p["L"] for p in ok], [p["peak_bytes"] / 2**30 for p in ok], marker="o", label=provider)
    ax.set_xlabel("sequence length L")
    ax.set_ylabel("peak memory (GiB)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True)
    ap.add_argument("--png", default=None)
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 384, 512, 640])
    ap.add_argument("--providers", nargs="+", default=["ours", "transformers"],
                    choices=["ours", "reference", "transformers"])
    add_model_arguments(ap)
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args(argv)
    points = measure(args.providers, args.lengths, args.config, args.num_blocks, args.passes, args.dtype,
                     args.device, args.timeout)
    result = dict(machine=machine_info(), config=args.config, num_blocks=args.num_blocks, passes=args.passes,
                  dtype=args.dtype, points=points, fold_memory_growth_exponent=exponents(points))
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.json}; growth exponent of fold memory: {result['fold_memory_growth_exponent']}")
    if args.png:
        plot(points, args.png, f"{args.config}, {args.num_blocks} block(s), {args.passes} pass, {args.dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
