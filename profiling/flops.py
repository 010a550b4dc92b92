"""Print ESMFold's per-component FLOP and memory-traffic model (``esmfold_fast.benchmarking.flops``).

    python profiling/flops.py --config esmfold_v1 --lengths 128 256 384 512 1024 --passes 4
    python profiling/flops.py --config esmfold_v1 --lengths 384 --detail   # per trunk-block component
"""

from __future__ import annotations

import argparse
import sys

from esmfold_fast.benchmarking.flops import (
    esm2_layer_costs,
    esmfold_costs,
    structure_module_costs,
    total,
    trunk_block_costs,
    trunk_block_polynomial,
)
from esmfold_fast.config import named_config


def _row(name: str, cost, whole: float) -> str:
    return (f"  {name:<18} {cost.flops:>11.3e} {100 * cost.flops / whole:>6.1f}% "
            f"{cost.bytes:>11.3e} {cost.intensity:>8.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="esmfold_v1", help="esmfold_v1, esmfold_v1_8M or tiny")
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 384, 512, 1024])
    ap.add_argument("--passes", type=int, default=None, help="trunk passes (default: max_recycles)")
    ap.add_argument("--num-blocks", type=int, default=None, help="override the trunk depth")
    ap.add_argument("--elem-bytes", type=int, default=4, help="bytes per value for the traffic model")
    ap.add_argument("--detail", action="store_true", help="per-component tables for each length")
    args = ap.parse_args(argv)
    overrides = {"num_blocks": args.num_blocks} if args.num_blocks else {}
    cfg = named_config(args.config, **overrides)
    passes = cfg.trunk.max_recycles if args.passes is None else args.passes
    a, b, c = trunk_block_polynomial(cfg.trunk)
    print(f"{args.config}: {cfg.esm.num_layers}-layer LM d={cfg.esm.embed_dim}, {cfg.trunk.num_blocks} blocks "
          f"c_s={cfg.trunk.sequence_state_dim} c_z={cfg.trunk.pairwise_state_dim}, {passes} trunk passes")
    print(f"trunk block FLOPs = {a:.0f} L^3 + {b:.3e} L^2 + {c:.3e} L")
    print(f"\n{'L':>6} {'total FLOPs':>12} {'esm2':>10} {'trunk':>10} {'struct':>10} {'trunk %':>8} {'bytes':>11}")
    for L in args.lengths:
        costs = esmfold_costs(L, cfg, passes, args.elem_bytes)
        whole = total(costs)
        print(f"{L:>6} {whole.flops:>12.3e} {costs['esm2'].flops:>10.2e} {costs['trunk'].flops:>10.2e} "
              f"{costs['structure_module'].flops:>10.2e} {100 * costs['trunk'].flops / whole.flops:>7.1f}% "
              f"{whole.bytes:>11.3e}")
    if args.detail:
        header = f"  {'component':<18} {'FLOPs':>11} {'share':>7} {'bytes':>11} {'FLOP/B':>8}"
        for L in args.lengths:
            block = trunk_block_costs(L, cfg.trunk, args.elem_bytes)
            print(f"\nL={L}: one trunk block\n{header}")
            for name, cost in block.items():
                print(_row(name, cost, total(block).flops))
            layer = esm2_layer_costs(L, cfg.esm, args.elem_bytes)
            print(f"L={L}: one ESM-2 layer\n{header}")
            for name, cost in layer.items():
                print(_row(name, cost, total(layer).flops))
            sm = structure_module_costs(L, cfg.trunk.structure_module, args.elem_bytes)
            print(f"L={L}: structure module (one pass)\n{header}")
            for name, cost in sm.items():
                print(_row(name, cost, total(sm).flops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
