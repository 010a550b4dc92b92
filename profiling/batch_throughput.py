"""Records per hour of ``esmfold-fast fold`` on a FASTA of mixed lengths, batched against one record per pass.

Random weights at ESMFold's trunk width (``esmfold_v1_8M``: the 8M LM, full-width trunk blocks, the real
structure module), written once in the transformers layout; the FASTA is ``--records`` random sequences with
lengths uniform in ``--min-length``..``--max-length`` (seeded). Each mode folds the whole file through the real
command into a fresh directory; the modes alternate over ``--rounds`` and every time is reported.

    python profiling/batch_throughput.py --json benchmarks/results/batch-throughput.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from esmfold_fast.benchmarking.measure import machine_info, prepare_esmfold_checkpoint
from esmfold_fast.cli import main as cli_main
from esmfold_fast.config import named_config

LETTERS = "ACDEFGHIKLMNPQRSTVWY"


def write_fasta(path: Path, records: int, lo: int, hi: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    lengths = [rng.randint(lo, hi) for _ in range(records)]
    path.write_text("".join(f">rec{i:03d}\n{''.join(rng.choice(LETTERS) for _ in range(n))}\n"
                            for i, n in enumerate(lengths)))
    return lengths


def fold_seconds(fasta: Path, model: Path, outdir: Path, max_tokens: int, num_recycles: int) -> float:
    argv = ["fold", str(fasta), "-o", str(outdir), "--model", str(model), "--device", "cpu", "-q",
            "--num-recycles", str(num_recycles), "--max-tokens-per-batch", str(max_tokens)]
    started = time.perf_counter()
    status = cli_main(argv)
    seconds = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"fold exited {status}")
    return seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100)
    ap.add_argument("--min-length", type=int, default=50)
    ap.add_argument("--max-length", type=int, default=400)
    ap.add_argument("--num-blocks", type=int, default=1, help="trunk blocks of the random model")
    ap.add_argument("--num-recycles", type=int, default=0)
    ap.add_argument("--batch-tokens", type=int, default=1024, help="the batched mode's --max-tokens-per-batch")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    model = prepare_esmfold_checkpoint(named_config("esmfold_v1_8M", num_blocks=args.num_blocks))
    runs: dict[str, list[float]] = {"batched": [], "single": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lengths = write_fasta(tmp / "in.fa", args.records, args.min_length, args.max_length, seed=0)
        modes = {"batched": args.batch_tokens, "single": 0}
        for r in range(args.rounds):
            order = list(modes) if r % 2 == 0 else list(modes)[::-1]
            for mode in order:
                seconds = fold_seconds(tmp / "in.fa", model, tmp / f"{mode}{r}", modes[mode], args.num_recycles)
                runs[mode].append(seconds)
                print(f"round {r} {mode}: {seconds:.1f} s ({3600 * args.records / seconds:.0f} records/h)",
                      file=sys.stderr)
    result = {
        "machine": machine_info(),
        "records": args.records, "lengths": [min(lengths), max(lengths), statistics.mean(lengths)],
        "model": f"esmfold_v1_8M, {args.num_blocks} trunk block(s), random weights, fp32",
        "num_recycles": args.num_recycles, "batch_tokens": args.batch_tokens, "threads": args.threads,
        "seconds": runs,
        "records_per_hour": {m: 3600 * args.records / statistics.median(t) for m, t in runs.items()},
    }
    result["batched_over_single"] = result["records_per_hour"]["batched"] / result["records_per_hour"]["single"]
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
