"""Wall time and device-hours to fold a length distribution on N workers, from measured fold times.

    python profiling/throughput_model.py --bench-json benchmarks/results/cpu-bench-after-gpu-path-2026-12-01.json \\
        --histogram profiling/data/uniprot_like_lengths.tsv --sequences 1000000 --workers 8
    python profiling/throughput_model.py --summary out/summary.tsv --fasta my_proteins.fasta --workers 4
    python profiling/throughput_model.py --time 384=14.2 --time 128=2.5 --histogram H.tsv \\
        --sequences 617000000 --workers 2000             # the ESM Atlas, from the paper's V100 figure

Times come from an ``esmfold-fast bench --json`` file, a finished run's ``summary.tsv`` or ``--time L=SECONDS``;
the distribution from a histogram TSV (``profiling/data/``, with its source) or any FASTA (``--fasta``; also
``--write-histogram`` to keep it). See ``esmfold_fast.benchmarking.throughput`` for the model.
"""

from __future__ import annotations

import argparse
import json
import sys

from esmfold_fast.benchmarking.throughput import (
    FoldTimes,
    Histogram,
    estimate,
    times_from_bench_json,
    times_from_summary,
)


def _pair(text: str) -> tuple[int, float]:
    try:
        length, seconds = text.split("=")
        return int(length), float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected L=SECONDS, got {text!r}") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    times = ap.add_mutually_exclusive_group(required=True)
    times.add_argument("--bench-json", help="esmfold-fast bench --json output")
    times.add_argument("--summary", help="summary.tsv of a finished fold run")
    times.add_argument("--time", type=_pair, action="append", help="L=SECONDS (repeat)")
    ap.add_argument("--provider", default="ours", help="bench rows to use (default: ours)")
    dist = ap.add_mutually_exclusive_group(required=True)
    dist.add_argument("--histogram", help="TSV of lo, hi, fraction")
    dist.add_argument("--fasta", help="take the length distribution of this FASTA file")
    ap.add_argument("--write-histogram", help="save the --fasta distribution as a histogram TSV")
    ap.add_argument("--sequences", type=int, default=None, help="sequences to fold (default: the FASTA's count)")
    ap.add_argument("--workers", type=int, default=1, help="GPUs or CPU workers folding in parallel")
    ap.add_argument("--max-length", type=int, default=2700, help="longer sequences are skipped, as by fold")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a sentence")
    args = ap.parse_args(argv)

    if args.bench_json:
        fold_times = times_from_bench_json(args.bench_json, args.provider)
    elif args.summary:
        fold_times = times_from_summary(args.summary)
    else:
        fold_times = FoldTimes.from_pairs(args.time)
    if args.fasta:
        from esmfold_fast.fasta import read_fasta

        records = read_fasta(args.fasta, max_length=None).records
        histogram = Histogram.from_lengths([r.num_residues for r in records], source=f"lengths of {args.fasta}")
        if args.write_histogram:
            histogram.write(args.write_histogram)
        sequences = args.sequences or len(records)
    else:
        histogram = Histogram.read(args.histogram)
        if args.sequences is None:
            ap.error("--sequences is needed with --histogram")
        sequences = args.sequences
    result = estimate(fold_times, histogram, sequences, args.workers, args.max_length)
    if args.json:
        print(json.dumps({**result.__dict__, "sequences_per_device_hour": result.sequences_per_device_hour,
                          "mean_length": histogram.mean_length(), "histogram_source": histogram.source,
                          "measured_lengths": fold_times.lengths, "measured_seconds": fold_times.seconds}))
    else:
        print(f"{sequences} sequences (mean length {histogram.mean_length():.0f}) on {args.workers} workers: "
              f"{result.wall_hours:.2f} h wall, {result.device_hours:.1f} device-hours, "
              f"{result.sequences_per_device_hour:.0f} sequences per device-hour "
              f"({result.seconds_per_sequence:.2f} s each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
