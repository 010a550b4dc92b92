"""A throughput model: measured fold times per length -> wall time and device-hours for a length distribution.

Fold time is interpolated piecewise linearly in log-log space between measured lengths; beyond the measured
range it is extrapolated along the end segment's exponent, held between 1 (per-residue work) and 3 (the
triangular updates' O(L^3)), so a few measured points are enough and nothing goes negative. A distribution is a
histogram of ``(lo, hi, fraction)`` bins, each bin timed at its midpoint.

Time sources: ``esmfold-fast bench --json`` rows (``provider``, ``L``, ``median_s``), or a batch run's
``summary.tsv`` (``length``, ``seconds``: the per-record share of its batch), or explicit ``L=seconds`` pairs.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

MIN_EXPONENT, MAX_EXPONENT = 1.0, 3.0


@dataclass(frozen=True)
class FoldTimes:
    """Seconds per fold at measured lengths (sorted, one median per length)."""

    lengths: tuple[int, ...]
    seconds: tuple[float, ...]

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[int, float]]) -> "FoldTimes":
        by_length: dict[int, list[float]] = defaultdict(list)
        for length, seconds in pairs:
            if length < 1 or not seconds > 0:
                raise ValueError(f"need length >= 1 and seconds > 0, got L={length}, {seconds} s")
            by_length[int(length)].append(float(seconds))
        if not by_length:
            raise ValueError("no fold times given")
        lengths = tuple(sorted(by_length))
        return cls(lengths, tuple(statistics.median(by_length[n]) for n in lengths))

    def __call__(self, length: float) -> float:
        """Seconds for one fold of ``length`` residues."""
        xs, ys = self.lengths, self.seconds
        if len(xs) == 1:
            return ys[0] * (length / xs[0]) ** MAX_EXPONENT if length > xs[0] else ys[0] * length / xs[0]
        i = 1
        while i < len(xs) - 1 and length > xs[i]:
            i += 1
        if length < xs[0]:
            i = 1
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        slope = math.log(y1 / y0) / math.log(x1 / x0)
        if length < x0 or length > x1:  # outside the measured range: a bounded power law
            slope = min(MAX_EXPONENT, max(MIN_EXPONENT, slope))
            anchor_x, anchor_y = (x0, y0) if length < x0 else (x1, y1)
            return anchor_y * (length / anchor_x) ** slope
        return y0 * (length / x0) ** slope


def times_from_bench_json(path: str | Path, provider: str = "ours") -> FoldTimes:
    data = json.loads(Path(path).read_text())
    pairs = [(r["L"], r["median_s"]) for r in data.get("rows", []) if r.get("provider") == provider]
    if not pairs:
        raise ValueError(f"{path}: no rows of provider {provider!r}")
    return FoldTimes.from_pairs(pairs)


def times_from_summary(path: str | Path) -> FoldTimes:
    """Per-record times of a finished ``fold`` run (rows of status ``folded``)."""
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t") if r.get("status") == "folded" and r.get("seconds")]
    if not rows:
        raise ValueError(f"{path}: no folded records with times")
    return FoldTimes.from_pairs((int(r["length"]), float(r["seconds"])) for r in rows)


@dataclass(frozen=True)
class Histogram:
    """Length bins ``[lo, hi)`` and the fraction of sequences in each (fractions sum to 1)."""

    bins: tuple[tuple[int, int, float], ...]
    source: str = ""

    @classmethod
    def read(cls, path: str | Path) -> "Histogram":
        """A TSV with ``lo  hi  fraction`` rows; lines starting with ``#`` are the source notes."""
        bins, notes = [], []
        for line in Path(path).read_text().splitlines():
            if line.startswith("#"):
                notes.append(line.lstrip("# ").rstrip())
            elif line.strip() and not line.startswith("lo"):
                lo, hi, frac = line.split("\t")
                bins.append((int(lo), int(hi), float(frac)))
        return cls.normalised(bins, " ".join(notes))

    @classmethod
    def from_lengths(cls, lengths: Sequence[int], width: int = 50, source: str = "") -> "Histogram":
        counts: dict[int, int] = defaultdict(int)
        for n in lengths:
            counts[(n // width) * width] += 1
        return cls.normalised([(lo, lo + width, c) for lo, c in sorted(counts.items())], source)

    @classmethod
    def normalised(cls, bins: Iterable[tuple[int, int, float]], source: str = "") -> "Histogram":
        bins = [(lo, hi, w) for lo, hi, w in bins if w > 0]
        total = sum(w for _, _, w in bins)
        if not bins or total <= 0:
            raise ValueError("empty length histogram")
        return cls(tuple((lo, hi, w / total) for lo, hi, w in bins), source)

    def mean_length(self) -> float:
        return sum((lo + hi) / 2 * f for lo, hi, f in self.bins)

    def write(self, path: str | Path) -> None:
        lines = [f"# {self.source}"] if self.source else []
        lines.append("lo\thi\tfraction")
        lines += [f"{lo}\t{hi}\t{f:.6g}" for lo, hi, f in self.bins]
        Path(path).write_text("\n".join(lines) + "\n")


@dataclass(frozen=True)
class Estimate:
    sequences: int
    workers: int
    seconds_per_sequence: float  # mean over the distribution, one worker
    wall_hours: float
    device_hours: float

    @property
    def sequences_per_device_hour(self) -> float:
        return 3600 / self.seconds_per_sequence


def estimate(times: FoldTimes, histogram: Histogram, sequences: int, workers: int,
             max_length: int | None = None) -> Estimate:
    """Wall time and device-hours to fold ``sequences`` drawn from ``histogram`` on ``workers`` workers (perfect
    load balance: the batch runner's length sorting and a long queue make that close). Bins above ``max_length``
    are dropped, as a run with ``--max-length`` would skip them."""
    bins = [(lo, hi, f) for lo, hi, f in histogram.bins if max_length is None or lo < max_length]
    kept = sum(f for _, _, f in bins)
    per_sequence = sum(f * times((lo + hi) / 2) for lo, hi, f in bins) / kept
    device_seconds = per_sequence * sequences * kept
    return Estimate(sequences, workers, per_sequence, device_seconds / workers / 3600, device_seconds / 3600)
