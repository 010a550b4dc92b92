"""``esmfold-fast bench`` in its quick mode, and the L=384 labelling logic."""

import argparse
import json

from esmfold_fast import bench
from esmfold_fast.bench_flops import esmfold_flops
from esmfold_fast.config import named_config


def test_quick_bench_writes_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--json", str(out), "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    printed = capsys.readouterr().out
    providers = {r["provider"] for r in result["rows"]}
    assert providers == {"ours", "reference", "transformers"}
    for row in result["rows"]:
        assert row["median_s"] > 0 and row["flops"] > 0 and row["L"] == 16
        assert row["provider"] == "ours" or row["ours_speedup"] > 0
    assert result["l384"]["how"].startswith("ESTIMATE")  # tiny model: never presented as measured
    assert result["matmul_peak_fp32_gflops"] > 0
    assert "14.2 s" in printed and "ESTIMATE" in printed and "transformers" in printed


def _args(**kw):
    base = dict(config="esmfold_v1", passes=4, num_blocks=None)
    base.update(kw)
    return argparse.Namespace(**base)


def test_l384_is_measured_only_for_the_released_shape():
    v1 = named_config("esmfold_v1")
    row = dict(provider="ours", L=384, median_s=20.0, flops=esmfold_flops(384, v1, 4))
    measured = bench._l384_context(_args(), v1, [row])
    assert measured["how"].startswith("measured") and measured["ours_s"] == 20.0
    # one pass at the same shape: the estimate scales the measured rate to 4 passes
    one = dict(row, flops=esmfold_flops(384, v1, 1), median_s=5.0)
    est = bench._l384_context(_args(passes=1), v1, [one])
    assert est["how"].startswith("ESTIMATE")
    assert abs(est["ours_s"] - 5.0 * esmfold_flops(384, v1, 4) / esmfold_flops(384, v1, 1)) < 1e-6
