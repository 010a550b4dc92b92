"""The one-command GPU report (profiling/gpu_report.py), on CPU: its plumbing, JSON and search logic.

The real run needs CUDA; here ``--cpu-smoke`` drives every section with tiny shapes through the torch
backend (the triton rows and the backend agreement through Triton's interpreter, which tests/conftest.py
turns on), and the pieces with logic of their own (pytest outcome counting, the longest-chain search,
time caps, section isolation, FLOP counts, error figures) are checked directly.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("gpu_report_under_test", ROOT / "profiling" / "gpu_report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


gr = _load()

FAKE_TESTS = """
import pytest
def test_a(): pass
def test_b(): pass
def test_c(): assert False
@pytest.mark.skip(reason="no")
def test_d(): pass
"""


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One ``--cpu-smoke`` run (kernel tests replaced by a file with known outcomes)."""
    tmp = tmp_path_factory.mktemp("gpu_report")
    fake = tmp / "fake_kernel_tests.py"
    fake.write_text(FAKE_TESTS)
    out = tmp / "results"
    assert gr.main(["--cpu-smoke", "--out", str(out), "--kernel-tests", str(fake)]) == 0
    files = list(out.glob("gpu_report-*.json"))
    assert len(files) == 1, files
    return files[0], json.loads(files[0].read_text())


def test_smoke_writes_named_json(smoke):
    path, report = smoke
    date = report["env"]["date"][:10]
    assert path.name == f"gpu_report-{gr.device_slug(report['env']['device'])}-{date}.json"
    assert report["mode"] == "cpu-smoke" and report["env"]["torch"] == torch.__version__
    assert report["env"]["triton"] and report["env"]["python"]


def test_smoke_every_section_ran(smoke):
    _, report = smoke
    assert set(report["sections"]) == {name for name, _ in gr.SECTIONS}
    for name, status in report["sections"].items():
        assert status["status"] == "ok", (name, status)
        assert status["seconds"] <= status["cap_s"] + 10, (name, status)


def test_smoke_counts_kernel_test_outcomes(smoke):
    kt = smoke[1]["kernel_tests"]
    assert (kt["passed"], kt["failed"], kt["skipped"], kt["error"]) == (2, 1, 1, 0)
    assert kt["returncode"] == 1 and not kt["timed_out"]
    assert kt["failed_tests"] and kt["failed_tests"][0].endswith("::test_c")


def test_smoke_peaks_and_ops(smoke):
    report = smoke[1]
    peaks = report["peaks"]
    assert set(peaks["matmul_tflops"]) == {"bfloat16", "float16", "float32"}
    assert all(v > 0 for v in peaks["matmul_tflops"].values()) and peaks["copy_gbs"] > 0
    ops = report["ops"]
    measured = {(r["op"], r["provider"]) for r in ops if r["status"] == "ok"}
    for op in ("triangle_attention", "triangle_multiplicative_update", "rotary_attention", "layer_norm"):
        assert {(op, p) for p in ("triton", "torch", "reference")} <= measured, op
    for r in ops:
        assert r["status"] == "ok", r
        # every implementation against the float64 reference on the same inputs (fp32 on the CPU)
        assert 0 <= r["max_rel_err"] < 1e-4 and 0 <= r["max_abs_err"] < 1e-3, r
        if r["provider"] == "triton":  # the interpreter: correctness only
            assert not r["timed"] and "ms" not in r and "speedup_vs_torch" not in r
            continue
        assert r["timed"] and r["ms"] > 0 and r["flops"] > 0 and r["bytes"] > 0
        assert math.isclose(r["tflops"], r["flops"] / (r["ms"] * 1e-3) / 1e12, rel_tol=1e-9)
        assert math.isclose(r["gbs"], r["bytes"] / (r["ms"] * 1e-3) / 1e9, rel_tol=1e-9)
        assert r["frac_matmul_peak"] > 0 and r["frac_copy_peak"] > 0
    assert "rel err" in gr.summary(report)


def test_error_figures_catch_a_wrong_implementation():
    """The error columns are not decorative: a provider off by 1% shows a 1% relative error."""
    case = gr.layer_norm_case(16, 48, torch.float32, torch.device("cpu"))
    good = case.providers["torch"]
    case.providers = {"torch": good, "broken": lambda: (lambda f=good(): f() * 1.01)}
    rows = {r["provider"]: r for r in gr.measure_case(case, gr.make_plan("cpu-smoke"), torch.device("cpu"),
                                                        None, gr.Deadline(30))}
    assert rows["torch"]["max_rel_err"] < 1e-6
    assert rows["broken"]["max_rel_err"] == pytest.approx(0.01, rel=0.05)


def test_smoke_end_to_end_and_max_length(smoke):
    report = smoke[1]
    ours = [r for r in report["end_to_end"] if r["status"] == "ok"]
    assert ours and ours[0]["provider"] == "ours" and ours[0]["L"] == 8 and ours[0]["seconds"] > 0
    assert ours[0]["passes"] == 1  # the tiny config's max_recycles
    assert ours[0]["weights"].startswith("shared")
    hf = report["end_to_end_transformers"]
    assert hf and hf[0]["provider"] == "transformers" and hf[0]["status"] == "ok"
    assert hf[0]["weights"].startswith("shared")
    (agreement,) = report["backend_agreement"]  # the tiny config folds in one pass
    assert agreement["status"] == "ok" and agreement["passes"] == 1 and agreement["L"] == 8
    assert 0 <= agreement["max_pos_err"] < 1e-3 and agreement["max_plddt_err"] < 1e-3 and agreement["ptm_err"] < 1e-4
    assert "triton vs torch" in gr.summary(report)
    ml = report["max_length"]
    assert ml["longest_ok"] >= 8 and ml["limited_by"] in ("ceiling", "time cap")
    assert "longest chain" in gr.summary(report)


# --------------------------------------------------------------------------------------------------
# Pieces with logic of their own
# --------------------------------------------------------------------------------------------------
def test_count_outcomes_reads_partial_verbose_logs():
    log = ("tests/test_x.py::test_a[fp32-17] PASSED                  [ 10%]\n"
           "tests/test_x.py::test_a[bf16-37] FAILED                  [ 20%]\n"
           "tests/test_x.py::test_b SKIPPED (no cuda)                [ 30%]\n"
           "tests/test_x.py::test_c ERROR                            [ 40%]\n"
           "tests/test_x.py::test_d XFAIL                            [ 50%]\n"
           "FAILED tests/test_x.py::test_a[bf16-37] - AssertionError\n"  # -rA summary: not a result line
           "tests/test_x.py::test_e PASS")  # cut off mid-line by the time cap
    counts = gr.count_outcomes(log)
    assert counts == {"passed": 1, "failed": 1, "skipped": 1, "error": 1, "xfail": 1, "xpass": 0}


def test_device_slug_and_output_path_never_overwrite(tmp_path):
    assert gr.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    first = gr.output_path(tmp_path, "NVIDIA A100-SXM4-80GB", "2025-01-02")
    assert first.name == "gpu_report-nvidia-a100-sxm4-80gb-2025-01-02.json"
    first.write_text("{}")
    second = gr.output_path(tmp_path, "NVIDIA A100-SXM4-80GB", "2025-01-02")
    assert second.name == "gpu_report-nvidia-a100-sxm4-80gb-2025-01-02-2.json"


def test_plans_fit_their_time_budgets():
    full, quick = gr.make_plan("full"), gr.make_plan("quick")
    # the whole report within 8 minutes (quick: 3), with 45 s left for start-up, building models and writing
    assert sum(full.caps.values()) <= 480 - 45
    assert sum(quick.caps.values()) <= 180 - 45
    assert full.e2e_lengths == (128, 256, 384, 512, 1024) and full.e2e_config == "esmfold_v1"
    assert full.tri_att_lengths == (256, 512, 1024, 2048) and (full.tri_att_heads, full.tri_att_dim) == (4, 32)
    assert full.tri_mul_lengths == (256, 512, 1024, 2048) and full.tri_mul_channels == 128
    assert (full.rot_length, full.rot_dim) == (1024, 64)
    assert {w for _, w, _ in full.ln_shapes} == {128, 1024, 2560}
    with pytest.raises(ValueError):
        gr.make_plan("slow")


def test_deadline_and_projection():
    d = gr.Deadline(0.5)
    d.require(0.1, "fits")
    with pytest.raises(gr.TimeCap, match="too long"):
        d.require(5.0, "too long")
    assert gr._projected([], 100) == 0.0
    assert gr._projected([(100, 2.0)], 200) == pytest.approx(16.0)  # L^3


def test_op_flop_counts():
    case = gr.triangle_attention_case(12, 2, 16, torch.float32, torch.device("cpu"))
    assert case.flops == 4 * 12**3 * 2 * 16
    assert set(case.providers) == {"triton", "torch", "reference"} and case.untimed == {"triton"}
    tm = gr.triangle_multiplication_case(10, 8, torch.float32, torch.device("cpu"))
    assert tm.flops == 2 * 10**2 * 8 * 5 * 8 + 2 * 10**3 * 8 + 2 * 10**2 * 8 * 8
    rot = gr.rotary_attention_case(16, 2, 8, torch.float32, torch.device("cpu"))
    assert rot.flops == 4 * 2 * 16**2 * 8 and rot.bytes == 4 * 16 * 2 * 8 * 4 + 2 * 16 * 8 * 4


class _FakeFolder:
    """Stands in for the model in the longest-chain search: out of memory above ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit, self.calls = limit, []

    def infer(self, sequences, num_recycles=None):
        L = len(sequences[0])
        self.calls.append((L, num_recycles))
        if L > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory at L={L}")
        return {}

    def parameters(self):
        return iter(())


@pytest.mark.parametrize("limit", [37, 131, 8])
def test_max_length_doubles_then_bisects(limit):
    plan = gr.make_plan("cpu-smoke")
    plan.max_len_start, plan.max_len_ceiling, plan.max_len_resolution = 8, 4096, 4
    fake = _FakeFolder(limit)
    out = gr.section_max_length(plan, torch.device("cpu"), {"ours_model": fake}, gr.Deadline(30))
    assert out["limited_by"] == "memory"
    assert out["longest_ok"] <= limit < out["first_failure"]
    assert out["first_failure"] - out["longest_ok"] <= 4
    assert all(n == 0 for _, n in fake.calls)  # one trunk pass per trial
    statuses = [t["status"] for t in out["trials"]]
    doubling = [t["L"] for t in out["trials"][: statuses.index("oom") + 1]]
    assert doubling == [8 * 2**i for i in range(len(doubling))]  # doubled up to the first failure


def test_max_length_stops_at_ceiling_and_respects_time_cap():
    plan = gr.make_plan("cpu-smoke")
    plan.max_len_start, plan.max_len_ceiling = 8, 64
    out = gr.section_max_length(plan, torch.device("cpu"), {"ours_model": _FakeFolder(10**6)}, gr.Deadline(30))
    assert (out["longest_ok"], out["first_failure"], out["limited_by"]) == (64, None, "ceiling")
    capped = gr.section_max_length(plan, torch.device("cpu"), {"ours_model": _FakeFolder(10**6)},
                                   gr.Deadline(-1))
    assert capped["limited_by"] == "time cap" and capped["longest_ok"] is None


def test_a_failing_section_does_not_stop_the_others(monkeypatch):
    ran = []

    def boom(plan, device, ctx, deadline):
        raise RuntimeError("broken section")

    def fine(plan, device, ctx, deadline):
        ran.append("fine")
        return []

    monkeypatch.setattr(gr, "SECTIONS", (("peaks", boom), ("ops", fine)))
    report = gr.run_sections(gr.make_plan("cpu-smoke"), torch.device("cpu"))
    assert report["sections"]["peaks"]["status"] == "error"
    assert "broken section" in report["sections"]["peaks"]["error"]
    assert report["sections"]["ops"]["status"] == "ok" and report["ops"] == [] and ran == ["fine"]
    assert "section peaks: error" in gr.summary(report)


def test_is_oom():
    assert gr.is_oom(torch.cuda.OutOfMemoryError("x"))
    assert gr.is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not gr.is_oom(ValueError("shape mismatch"))


def test_needs_cuda_unless_smoke(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gr.main(["--quick"]) == 2
    assert "--cpu-smoke" in capsys.readouterr().err


def test_end_to_end_models_share_every_weight():
    """Ours is loaded from transformers' randomised model: every folding-head tensor is the peer's."""
    ours, hf, weights = gr.build_shared_models(gr.make_plan("cpu-smoke"), torch.device("cpu"))
    assert weights.startswith("shared") and hf is not None
    theirs = hf.state_dict()
    mine = {k: v for k, v in ours.state_dict().items() if not k.startswith("esm.")}
    assert len(mine) > 100 and set(mine) <= set(theirs)
    for key, value in mine.items():
        assert torch.equal(value, theirs[key].to(value.dtype)), key
    # every parameter was randomised: no zero-initialised layer left to hide a wrong kernel
    assert all(p.abs().sum() > 0 for name, p in hf.named_parameters() if name.endswith("weight"))
    # and the LM: fair-esm's key layout on our side, the same fp16-rounded values
    emb = theirs["esm.embeddings.word_embeddings.weight"]
    assert torch.equal(ours.esm.embed_tokens.weight, emb.to(ours.esm.embed_tokens.weight.dtype))
