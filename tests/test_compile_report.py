"""Ahead-of-time compile report (profiling/compile_report.py): every kernel config compiles for sm_90
and sm_80 without a GPU, spills nothing, fits in shared memory and reaches tensor cores.

The report runs once per session in a subprocess with TRITON_INTERPRET unset (tests/conftest.py sets
it for this process, and kernels decorated under the interpreter cannot be compiled). This file also
holds toy kernels with an ``aot_configs()`` of their own: they check the report's pipeline, and one of
them spills on purpose so the spill detection is shown to fire.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import triton
import triton.language as tl

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "profiling" / "compile_report.py"
ARCHS = (90, 80)


# --------------------------------------------------------------------------------------------------
# Toy kernels (compiled by the report in its own process; never launched here)
# --------------------------------------------------------------------------------------------------
@triton.jit
def _toy_matmul(a_ptr, b_ptr, c_ptr, n_cols, BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    rows = tl.arange(0, BLOCK)
    cols = tl.arange(0, BLOCK)
    offs = rows[:, None] * n_cols + cols[None, :]  # [BLOCK, BLOCK]
    a = tl.load(a_ptr + offs)
    b = tl.load(b_ptr + offs)
    c = tl.dot(a, b, input_precision=PRECISION)  # [BLOCK, BLOCK] fp32
    tl.store(c_ptr + offs, c.to(c_ptr.dtype.element_ty))


@triton.jit
def _toy_scale_rows(x_ptr, y_ptr, n_cols, scale, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    keep = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=keep, other=0.0).to(tl.float32)  # [BLOCK]
    total = tl.sum(x, axis=0)
    tl.store(y_ptr + row * n_cols + cols, (x * scale / total).to(y_ptr.dtype.element_ty), mask=keep)


def aot_configs():
    """The toys in the report's format; ``toy_spill`` keeps 16K floats live in one warp: it spills."""
    from fastfold_kernels import AOTConfig

    mm = {"a_ptr": "*bf16", "b_ptr": "*bf16", "c_ptr": "*bf16", "n_cols": "i32"}
    mm32 = {"a_ptr": "*fp32", "b_ptr": "*fp32", "c_ptr": "*fp32", "n_cols": "i32"}
    rows = {"x_ptr": "*fp32", "y_ptr": "*fp32", "n_cols": "i32", "scale": "fp32"}
    return [
        AOTConfig("toy_matmul_bf16", _toy_matmul, mm, {"BLOCK": 64, "PRECISION": "tf32"}, 4, 3, True),
        AOTConfig("toy_matmul_fp32_ieee", _toy_matmul, mm32, {"BLOCK": 32, "PRECISION": "ieee"}, 4, 2, True),
        AOTConfig("toy_scale_rows", _toy_scale_rows, rows, {"BLOCK": 1024}, 4, 1, False),
        AOTConfig("toy_spill", _toy_scale_rows, rows, {"BLOCK": 16384}, 1, 1, False),
    ]


# --------------------------------------------------------------------------------------------------
# Running the report
# --------------------------------------------------------------------------------------------------
def _load_report_module():
    spec = importlib.util.spec_from_file_location("compile_report_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


cr = _load_report_module()


def _run(args: list[str], tmp: Path, interpret: bool = False) -> tuple[int, list[dict], str]:
    out = tmp / "report.json"
    env = cr.clean_env()
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--json", str(out), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    if not out.exists():
        pytest.fail(f"compile_report wrote no JSON (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.returncode, json.loads(out.read_text()), proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def report(tmp_path_factory):
    """One report per session: the op modules plus this file's toys, sm_90 and sm_80."""
    rc, rows, log = _run(["--module", str(Path(__file__).resolve()), "--arch", *map(str, ARCHS)],
                         tmp_path_factory.mktemp("compile_report"))
    return rc, rows, log


def _rows(rows, kernel=None, module=None):
    return [r for r in rows if (kernel is None or r["kernel"] == kernel)
            and (module is None or r["module"] == module)]


def _one(rows, kernel, arch):
    found = [r for r in rows if r["kernel"] == kernel and r["arch"] == arch]
    assert len(found) == 1, f"{kernel} sm_{arch}: {len(found)} rows"
    return found[0]


# --------------------------------------------------------------------------------------------------
# The pipeline, on the toys
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_toy_matmul_reaches_tensor_cores(report, arch):
    row = _one(report[1], "toy_matmul_bf16", arch)
    assert row["error"] is None, row["error"]
    assert row["tensor_cores"] == ("HGMMA" if arch >= 90 else "HMMA")
    assert row["expects_tensor_cores"] and row["dots"] == [{"operand": "bf16", "precision": "tf32"}]
    assert 0 < row["registers"] <= 255 and row["spill_bytes"] == 0
    # two staged 64x64 bf16 tiles live in shared memory
    assert row["shared_bytes"] >= 2 * 64 * 64 * 2
    assert row["problems"] == []
    assert row["config"]["constexprs"] == {"BLOCK": 64, "PRECISION": "tf32"}
    assert row["config"]["pointer_dtypes"] == ["bf16"] and row["config"]["num_warps"] == 4


@pytest.mark.parametrize("arch", ARCHS)
def test_full_precision_fp32_dot_expects_no_tensor_cores(report, arch):
    row = _one(report[1], "toy_matmul_fp32_ieee", arch)
    assert row["dots"] == [{"operand": "f32", "precision": "ieee"}]
    assert not row["expects_tensor_cores"] and row["tensor_cores"] is None
    assert row["problems"] == []


@pytest.mark.parametrize("arch", ARCHS)
def test_elementwise_kernel_has_no_mma(report, arch):
    row = _one(report[1], "toy_scale_rows", arch)
    assert row["error"] is None and row["dots"] == [] and row["tensor_cores"] is None
    assert row["spill_bytes"] == 0 and row["problems"] == []


@pytest.mark.parametrize("arch", ARCHS)
def test_spilling_kernel_is_flagged(report, arch):
    row = _one(report[1], "toy_spill", arch)
    assert row["error"] is None
    assert row["registers"] > 0 and row["spill_bytes"] > 0
    assert any("spills" in p for p in row["problems"])


def test_report_exit_code_and_table(report):
    rc, rows, log = report
    assert rc == 1  # toy_spill is a problem, so the report must fail
    assert "toy_matmul_bf16" in log and "!! spills" in log
    assert {r["arch"] for r in rows if r["error"] is None} == set(ARCHS)


def test_reexecutes_without_interpreter(tmp_path):
    """Started with TRITON_INTERPRET=1 (as under this conftest), it still compiles."""
    rc, rows, log = _run(["--no-ops", "--module", str(Path(__file__).resolve()),
                          "--kernel", "toy_matmul_bf16", "--arch", "90"], tmp_path, interpret=True)
    assert rc == 0, log
    assert [(r["kernel"], r["arch"], r["tensor_cores"]) for r in rows] == [("toy_matmul_bf16", 90, "HGMMA")]


def test_ptxas_fallback_agrees_with_cuobjdump(report, tmp_path):
    """Where cuobjdump is missing the facts come from ptxas -v and the PTX: the same numbers."""
    rc, rows, log = _run(["--no-ops", "--module", str(Path(__file__).resolve()), "--tools", "ptxas",
                          "--kernel", "toy_matmul_bf16", "toy_spill"], tmp_path)
    assert rc == 1, log  # toy_spill still spills
    assert len(rows) == 4
    for row in rows:
        assert row["facts_from"].startswith("ptxas -v")
        ref = _one(report[1], row["kernel"], row["arch"])
        assert ref["facts_from"].startswith("cuobjdump")
        assert (row["registers"], row["spill_bytes"], row["tensor_cores"]) == \
            (ref["registers"], ref["spill_bytes"], ref["tensor_cores"])


# --------------------------------------------------------------------------------------------------
# The real kernels
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", cr.OP_MODULES)
def test_op_module_kernels_compile_clean(report, module):
    rows = _rows(report[1], module=module)
    errors = [r["error"] for r in rows if r["error"]]
    assert not errors, f"{module}: {errors}"
    kernels = {r["kernel"] for r in rows}
    assert kernels, f"{module}: no configurations reported"
    for kernel in kernels:
        assert {r["arch"] for r in rows if r["kernel"] == kernel} == set(ARCHS), kernel
    for row in rows:
        assert row["spill_bytes"] == 0, (row["kernel"], row["arch"], row["spill_bytes"])
        assert row["registers"] and row["registers"] <= 255
        assert row["shared_bytes"] <= cr.SHARED_LIMIT_BYTES[row["arch"]], (row["kernel"], row["arch"])
        if row["uses_dot"]:
            assert row["dots"], f"{row['kernel']}: uses_dot=True but no tt.dot"
            if row["expects_tensor_cores"]:
                wanted = "HGMMA" if row["arch"] >= 90 else "HMMA"
                assert row["tensor_cores"] == wanted, (row["kernel"], row["arch"], row["tensor_cores"])
        assert row["problems"] == [], (row["kernel"], row["arch"], row["problems"])


# --------------------------------------------------------------------------------------------------
# Parsers, on fixed tool output
# --------------------------------------------------------------------------------------------------
def test_parse_res_usage():
    text = ("\nResource usage:\n Common:\n  GLOBAL:0\n Function _attn_fwd:\n"
            "  REG:168 STACK:16 SHARED:0 LOCAL:8 CONSTANT[0]:596 TEXTURE:0 SURFACE:0 SAMPLER:0\n"
            " Function other:\n  REG:40 STACK:0 SHARED:1024 LOCAL:0 CONSTANT[0]:400\n")
    usage = cr.parse_res_usage(text)
    assert usage["_attn_fwd"]["REG"] == 168 and usage["_attn_fwd"]["STACK"] == 16
    assert usage["_attn_fwd"]["LOCAL"] == 8 and usage["other"]["SHARED"] == 1024


def test_parse_ptxas_verbose():
    text = ("ptxas info    : Function properties for k\n"
            "    24 bytes stack frame, 20 bytes spill stores, 12 bytes spill loads\n"
            "ptxas info    : Used 255 registers, used 1 barriers, 400 bytes cmem[0]\n")
    assert cr.parse_ptxas_verbose(text) == {"REG": 255, "STACK": 24, "SPILL_STORES": 20, "SPILL_LOADS": 12}
    with pytest.raises(ValueError):
        cr.parse_ptxas_verbose("nothing here")


def test_tensor_core_kind():
    assert cr.tensor_core_kind("  HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ ;\n HMMA.16816") == "HGMMA"
    assert cr.tensor_core_kind("/*0a0*/ HMMA.16816.F32.BF16 R8, R36, R16, RZ ;") == "HMMA"
    assert cr.tensor_core_kind("FFMA R1, R2, R3, R4 ; LDGSTS") is None
    assert cr.tensor_core_kind_from_ptx("wgmma.mma_async.sync.aligned.m64n64k16") == "HGMMA"
    assert cr.tensor_core_kind_from_ptx("mma.sync.aligned.m16n8k16.row.col") == "HMMA"
    assert cr.tensor_core_kind_from_ptx("fma.rn.f32") is None


def test_dot_summary():
    ttir = ("%c = tt.dot %a, %b, %z, inputPrecision = ieee : tensor<32x32xf32> * tensor<32x32xf32> "
            "-> tensor<32x32xf32> loc(#l)\n"
            "%d = tt.dot %e, %f, %z : tensor<64x16xbf16> * tensor<16x64xbf16> -> tensor<64x64xf32>\n"
            "%h = tt.dot %e, %f, %z, inputPrecision = tf32 : tensor<128x16xf32> * tensor<16x8xf32> -> x\n"
            "%g = arith.addf %c, %d : tensor<32x32xf32>\n")
    dots = cr.dot_summary(ttir)
    assert dots == [{"operand": "f32", "precision": "ieee"}, {"operand": "bf16", "precision": "ieee"},
                    {"operand": "f32", "precision": "tf32"}]
    assert cr.dots_need_tensor_cores(dots[1:2]) and cr.dots_need_tensor_cores(dots[2:])
    assert not cr.dots_need_tensor_cores(dots[:1])


def test_interpreter_detection_and_clean_env():
    assert cr.interpreter_requested({"TRITON_INTERPRET": "1"})
    assert not cr.interpreter_requested({"TRITON_INTERPRET": "0"})
    assert not cr.interpreter_requested({})
    assert "TRITON_INTERPRET" not in cr.clean_env({"TRITON_INTERPRET": "1", "A": "b"})


def test_name_filter():
    assert cr.name_matches(None, "anything")
    assert cr.name_matches(["tri*"], "layer_norm_fwd", "fastfold_kernels.triangle_attention")
    assert cr.name_matches(["layer_norm"], "ln_fwd_128", "fastfold_kernels.layer_norm")
    assert not cr.name_matches(["rotary*"], "ln_fwd_128", "fastfold_kernels.layer_norm")


def test_build_source_rejects_bad_configs():
    from fastfold_kernels import AOTConfig

    if not isinstance(_toy_matmul, triton.runtime.JITFunction):  # interpreted: cannot compile here
        with pytest.raises(TypeError, match="TRITON_INTERPRET"):
            cr.build_source(AOTConfig("x", _toy_matmul, {}, {}))
        return
    sig = {"a_ptr": "*bf16", "b_ptr": "*bf16", "c_ptr": "*bf16"}
    with pytest.raises(ValueError, match="n_cols"):
        cr.build_source(AOTConfig("x", _toy_matmul, sig, {"BLOCK": 64, "PRECISION": "tf32"}))
    with pytest.raises(ValueError, match="nope"):
        cr.build_source(AOTConfig("x", _toy_matmul, {**sig, "n_cols": "i32", "nope": "i32"},
                                  {"BLOCK": 64, "PRECISION": "tf32"}))
