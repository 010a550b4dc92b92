"""``esmfold-fast bench`` in its quick mode, the L=384 labelling logic, and the line between the
runtime and the benchmark code (a fold never imports ``esmfold_fast.benchmarking`` or the peers)."""

import argparse
import json
import subprocess
import sys
import textwrap

from esmfold_fast.benchmarking import cli as bench
from esmfold_fast.benchmarking.flops import esmfold_flops
from esmfold_fast.config import named_config

# Printed by the child: the loaded modules that belong to benchmark code or to the peers.
_FORBIDDEN = textwrap.dedent("""
    import sys

    def forbidden():
        return sorted(m for m in sys.modules
                      if m == "esmfold_fast.benchmarking" or m.startswith("esmfold_fast.benchmarking.")
                      or m == "transformers" or m.startswith("transformers.")
                      or m == "esm" or m.startswith("esm."))
""")


def _loaded_forbidden(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; the forbidden modules loaded by its end."""
    script = _FORBIDDEN + textwrap.dedent(code) + "\nimport json\nprint('FORBIDDEN ' + json.dumps(forbidden()))\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("FORBIDDEN ")][-1]
    return json.loads(line[len("FORBIDDEN "):])


def test_a_fold_imports_no_benchmark_code_nor_peers(tmp_path):
    loaded = _loaded_forbidden(f"""
        import torch
        import esmfold_fast
        model = esmfold_fast.ESMFold.from_config("tiny")
        with torch.inference_mode():
            out = model.infer("MKTAYIAKQR")
            pdb = model.infer_pdb("MKTAYIAKQR")
        assert bool(torch.isfinite(out["positions"]).all()) and "ATOM" in pdb
        open({str(tmp_path / "fold.pdb")!r}, "w").write(pdb)
    """)
    assert loaded == []
    assert (tmp_path / "fold.pdb").stat().st_size > 0


def test_the_command_line_module_imports_no_benchmark_code():
    assert _loaded_forbidden("import esmfold_fast.cli") == []
    # the bench subcommand is what loads it (positive control for the check above)
    assert "esmfold_fast.benchmarking.cli" in _loaded_forbidden("import esmfold_fast.cli\n"
                                                                "esmfold_fast.cli._bench(['--help'])")


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
