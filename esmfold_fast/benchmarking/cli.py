"""``esmfold-fast bench``: time ESMFold on this machine against the reference backend and transformers.

Random weights at real ESMFold shapes (no download): on CPU the 8M LM + two full-width trunk blocks +
the default structure module (``esmfold_v1_8M``), on CUDA the released ``esmfold_v1`` shape. All
providers load the same weights (one transformers checkpoint written once to a cache directory, or
one in-process model when transformers is not installed). Then the L=384 row of the paper is put in
context: measured when the model and length are esmfold_v1 at 384 with 4 passes, otherwise an
ESTIMATE extrapolated from the FLOP rate measured here (``esmfold_fast.benchmarking.flops``), labelled so.

    esmfold-fast bench                       # default comparison, printed table
    esmfold-fast bench --json bench.json     # also write every number
    esmfold-fast bench --quick               # seconds: tiny model, two short lengths
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from ..config import named_config
from .flops import esmfold_costs, esmfold_flops, total
from .measure import (
    build_fold,
    default_device,
    fold_spec,
    machine_info,
    measure_matmul_peak,
    ours_fold,
    prepare_esmfold_checkpoint,
    random_sequence,
    timed_runs,
)

# REFERENCE.md section 3
PAPER_ESMFOLD_V100_384_S = 14.2  # ESMFold paper, one V100, 384 residues
AF2_V100_S = {256: 36.0, 384: 66.0}  # AlphaFold2 paper, V100, no ensembling, without MSA search


def _parse(argv):
    ap = argparse.ArgumentParser(prog="esmfold-fast bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--config", default=None, help="esmfold_v1, esmfold_v1_8M or tiny")
    ap.add_argument("--num-blocks", type=int, default=None, help="trunk depth (default: 2 on CPU, 48 on CUDA)")
    ap.add_argument("--lengths", type=int, nargs="+", default=None)
    ap.add_argument("--passes", type=int, default=1, help="trunk passes per fold (num_recycles + 1)")
    ap.add_argument("--repeats", type=int, default=2, help="timed folds per provider and length (median)")
    ap.add_argument("--providers", nargs="+", default=["ours", "reference", "transformers"],
                    choices=["ours", "reference", "transformers"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="our model's dtype")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--quick", action="store_true", help="tiny model, short lengths: a few seconds")
    return ap.parse_args(argv)


def _defaults(args) -> None:
    device = args.device or default_device()
    args.device = device
    if args.quick:
        args.config = args.config or "tiny"
        args.lengths = args.lengths or [16]
        args.repeats = 1
    elif device == "cuda":
        args.config = args.config or "esmfold_v1"
        args.lengths = args.lengths or [256, 384]
    else:
        args.config = args.config or "esmfold_v1_8M"
        args.num_blocks = args.num_blocks or 2
        args.lengths = args.lengths or [128, 256]


def _config(args):
    overrides = {"num_blocks": args.num_blocks} if args.num_blocks else {}
    return named_config(args.config, **overrides)


def _have_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def _folds(args, cfg):
    """One fold callable factory per provider, all with the same weights."""
    providers = list(args.providers)
    notes = []
    if "transformers" in providers and not _have_transformers():
        providers.remove("transformers")
        notes.append("transformers is not installed: compared with the reference backend only")
    if _have_transformers():
        ckpt = prepare_esmfold_checkpoint(cfg)

        def make(provider, L):
            dtype = args.dtype if provider == "ours" else "float32"
            return build_fold(fold_spec(provider, ckpt, L, num_passes=args.passes, dtype=dtype,
                                        device=args.device))
    else:
        from .. import ESMFold

        model = ESMFold.from_config(cfg, device=args.device, dtype=getattr(torch, args.dtype)).eval()

        def make(provider, L):
            model.set_backend("reference" if provider == "reference" else "auto")
            return ours_fold(model, random_sequence(L), num_recycles=args.passes - 1)
    return providers, make, notes


def run(args) -> dict:
    _defaults(args)
    cfg = _config(args)
    peak = measure_matmul_peak(args.device, torch.float32, n=1024 if args.quick else None,
                               repeats=2 if args.quick else 5)
    providers, make, notes = _folds(args, cfg)
    rows = []
    for L in args.lengths:
        flops = total(esmfold_costs(L, cfg, args.passes)).flops
        for provider in providers:
            fold = make(provider, L)
            # one warm-up fold: allocator, lazy initialisation, kernel compilation on CUDA
            times, _ = timed_runs(fold, args.device, warmup=1, repeats=args.repeats)
            med = statistics.median(times)
            rows.append(dict(provider=provider, L=L, median_s=med, times_s=times, flops=flops,
                             gflops=flops / med / 1e9, fraction_of_matmul_peak=flops / med / peak,
                             dtype=args.dtype if provider == "ours" else "float32"))
            del fold
    for L in args.lengths:
        ours = next((r for r in rows if r["L"] == L and r["provider"] == "ours"), None)
        for r in rows:
            if ours and r["L"] == L and r["provider"] != "ours":
                r["ours_speedup"] = r["median_s"] / ours["median_s"]
    return dict(machine=machine_info(), device=args.device, config=args.config,
                num_blocks=cfg.trunk.num_blocks, lm=cfg.esm_type, passes=args.passes,
                matmul_peak_fp32_gflops=peak / 1e9, rows=rows, notes=notes,
                l384=_l384_context(args, cfg, rows))


def _l384_context(args, cfg, rows) -> dict:
    """The paper's L=384 figure next to ours: measured if that is what ran, else an estimate."""
    v1 = named_config("esmfold_v1")
    ours = [r for r in rows if r["provider"] == "ours"]
    if not ours:
        return {}
    exact = [r for r in ours if r["L"] == 384 and args.config == "esmfold_v1"
             and cfg.trunk.num_blocks == v1.trunk.num_blocks and args.passes == v1.trunk.max_recycles]
    if exact:
        seconds, how = exact[0]["median_s"], "measured: esmfold_v1 shape, L=384, 4 passes"
    else:
        basis = max(ours, key=lambda r: r["L"])
        rate = basis["flops"] / basis["median_s"]
        seconds = esmfold_flops(384, v1, v1.trunk.max_recycles) / rate
        how = (f"ESTIMATE: esmfold_v1 FLOPs at L=384 with 4 passes divided by the FLOP rate measured for "
               f"{args.config} ({cfg.trunk.num_blocks} blocks, {args.passes} pass) at L={basis['L']} "
               f"({rate / 1e9:.1f} GFLOP/s); not a measured time")
    return dict(ours_s=seconds, how=how, paper_esmfold_v100_s=PAPER_ESMFOLD_V100_384_S,
                af2_v100_s=AF2_V100_S[384], esmfold_v1_flops=esmfold_flops(384, v1, v1.trunk.max_recycles))


def _print(result) -> None:
    m = result["machine"]
    print(f"esmfold-fast bench on {result['device']} ({m.get('gpu') or m.get('cpu')}), torch {m['torch']}, "
          f"{m['torch_threads']} threads; matmul peak fp32 {result['matmul_peak_fp32_gflops']:.0f} GFLOP/s")
    print(f"model: {result['config']} ({result['lm']} LM, {result['num_blocks']} trunk blocks), "
          f"random weights, {result['passes']} trunk pass(es)")
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"\n{'provider':<13} {'dtype':<9} {'L':>5} {'median s':>9} {'GFLOP/s':>8} {'% peak':>7} {'ours is':>9}")
    for r in result["rows"]:
        faster = f"{r['ours_speedup']:.2f}x" if "ours_speedup" in r else ""
        print(f"{r['provider']:<13} {r['dtype']:<9} {r['L']:>5} {r['median_s']:>9.3f} {r['gflops']:>8.1f} "
              f"{100 * r['fraction_of_matmul_peak']:>6.1f}% {faster:>9}")
    ctx = result["l384"]
    if ctx:
        print(f"\nL=384, esmfold_v1 (3B LM, 48 blocks, 4 passes, {ctx['esmfold_v1_flops']:.2e} FLOPs):")
        print(f"  ours on this {result['device']}: {ctx['ours_s']:.1f} s  [{ctx['how']}]")
        print(f"  ESMFold paper, one V100: {ctx['paper_esmfold_v100_s']} s")
        print(f"  AlphaFold2, one V100, no ensembling: {ctx['af2_v100_s']:.0f} s plus MSA search")


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    result = run(args)
    _print(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
