"""The throughput model (esmfold_fast.benchmarking.throughput) and its command, profiling/throughput_model.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from esmfold_fast.benchmarking.throughput import FoldTimes, Histogram, estimate, times_from_summary

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "profiling"))
import throughput_model  # noqa: E402


def test_power_laws_are_interpolated_exactly_and_extrapolated_within_bounds():
    quadratic = FoldTimes.from_pairs([(100, 1.0), (200, 4.0), (400, 16.0), (200, 4.4), (200, 3.6)])
    assert quadratic.lengths == (100, 200, 400) and quadratic.seconds == (1.0, 4.0, 16.0)  # medians
    assert quadratic(150) == pytest.approx(2.25) and quadratic(300) == pytest.approx(9.0)
    assert quadratic(800) == pytest.approx(64.0) and quadratic(50) == pytest.approx(0.25)
    quartic = FoldTimes.from_pairs([(100, 1.0), (200, 16.0)])
    assert quartic(400) == pytest.approx(16.0 * 8)  # the exponent beyond the data is capped at 3
    flat = FoldTimes.from_pairs([(100, 2.0), (200, 2.0)])
    assert flat(50) == pytest.approx(1.0)  # and held at >= 1 below it
    with pytest.raises(ValueError):
        FoldTimes.from_pairs([(100, 0.0)])


def test_estimate_by_hand(tmp_path):
    times = FoldTimes.from_pairs([(100, 1.0), (300, 9.0)])  # t = L^2 / 10^4
    hist = Histogram.normalised([(50, 150, 3), (250, 350, 1), (3000, 3100, 1)])
    result = estimate(times, hist, sequences=1000, workers=4, max_length=2700)
    per = 0.75 * 1.0 + 0.25 * 9.0  # the 3000-residue bin is dropped, the rest renormalised
    assert result.seconds_per_sequence == pytest.approx(per)
    assert result.device_hours == pytest.approx(per * 1000 * 0.8 / 3600)
    assert result.wall_hours == pytest.approx(result.device_hours / 4)
    path = tmp_path / "h.tsv"
    hist.write(path)
    for got, want in zip(Histogram.read(path).bins, hist.bins, strict=True):
        assert got[:2] == want[:2] and got[2] == pytest.approx(want[2], rel=1e-5)


def test_times_from_a_run_summary_and_the_command(tmp_path, capsys):
    summary = tmp_path / "summary.tsv"
    summary.write_text("id\tlength\tchains\tmean_plddt\tptm\tiptm\tseconds\tstatus\terror\n"
                       "a\t100\t1\t50\t0.5\t\t1.0\tfolded\t\nb\t200\t1\t50\t0.5\t\t4.0\tfolded\t\n"
                       "c\t300\t1\t\t\t\t\tfailed\tout of memory\n")
    assert times_from_summary(summary).lengths == (100, 200)
    fasta = tmp_path / "in.fa"
    fasta.write_text(">x\n" + "A" * 120 + "\n>y\n" + "C" * 180 + "\n")
    assert throughput_model.main(["--summary", str(summary), "--fasta", str(fasta), "--workers", "2", "--json",
                                  "--write-histogram", str(tmp_path / "h.tsv")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sequences"] == 2 and out["workers"] == 2
    assert out["seconds_per_sequence"] == pytest.approx((125**2 + 175**2) / 2 / 1e4)  # bin midpoints
    assert (tmp_path / "h.tsv").read_text().startswith("# lengths of")
    shipped = Histogram.read(Path(__file__).resolve().parents[1] / "profiling/data/uniprot_like_lengths.tsv")
    assert "SYNTHETIC" in shipped.source and abs(shipped.mean_length() - 348.88) < 5
