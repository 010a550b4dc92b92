"""The one command to run on a CUDA machine: kernel tests, op speed, peaks, end to end, longest chain.

    python profiling/gpu_report.py [--out benchmarks/results/] [--quick]
    python profiling/gpu_report.py --cpu-smoke --out /tmp/r     # the plumbing, tiny shapes, no GPU

Sections (each time-capped and guarded: one failing section is recorded, the others still run):

1. ``kernel_tests``  pytest of the four op test files on this device (pass/fail/skip counts).
2. ``peaks``         measured bf16/fp16/fp32 matmul TFLOP/s (large ``torch.matmul``) and copy GB/s
                     (large ``clone``, read + write counted): the roofline every op is a fraction of.
3. ``ops``           per op at ESMFold shapes: ms, TFLOP/s, GB/s and fractions of the peaks for our
                     Triton op, ``_torch``, ``_reference``, and trifast / cuequivariance_torch when
                     importable (triangle attention H=4 D=32 bf16 L=256..2048; triangle
                     multiplication c=128 L=256..2048; rotary attention 40 heads x 64 fp16 L=1024;
                     LayerNorm widths 128/1024/2560). Every row of ours also has ``max_abs_err`` and
                     ``max_rel_err`` against the float64 reference on the same inputs (for triangle
                     attention at large L on a slice of rows, ``rows_checked``). Under ``--cpu-smoke`` the
                     triton rows run through the interpreter for these figures, untimed.
4. ``end_to_end``    ESMFold v1 shapes (ESM-2 3B + 48 blocks, ``num_recycles=None`` i.e. ``max_recycles``
                     = 4 trunk passes) at L = 128..1024, ours (triton backend). The weights are
                     transformers' ``EsmForProteinFolding`` with every parameter randomised, loaded into
                     ours (``ESMFold.from_transformers``), so section 7 times the peer on the same weights.
5. ``backend_agreement``  ``backend="triton"`` against ``backend="torch"`` on that model and one sequence:
                     ``max_pos_err`` (Angstrom), ``max_plddt_err``, ``ptm_err``, after one trunk pass and
                     after ``max_recycles`` passes.
6. ``max_length``    the longest L our model folds (one pass) on this device: doubling, then
                     bisection, under a time cap; trials that would outrun the cap are not started.
7. ``end_to_end_transformers``  transformers' model (LM in fp16, as the reference runs it) at the same
                     lengths, same weights.
8. ``env``           python/torch/triton/CUDA versions, device name, date.

Writes ``<out>/gpu_report-<device-slug>-<date>.json`` and prints a summary. Full mode stays under
8 minutes on one H100, ``--quick`` under 3. Timings use ``triton.testing.do_bench`` (median, L2 flushed) on
CUDA and the median of wall-clock repeats on CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import gc
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from esmfold_fast.benchmarking.measure import (
    random_sequence,
    randomize_parameters_,
    rotary_tables,
    synchronize,
    transformers_esmfold,
    transformers_inputs,
    tri_mul_weights,
)

ROOT = Path(__file__).resolve().parents[1]
KERNEL_TEST_FILES = (
    "tests/test_layer_norm.py",
    "tests/test_rotary_attention.py",
    "tests/test_triangle_attention.py",
    "tests/test_triangle_multiplicative_update.py",
    "tests/test_triton_backend.py",
)


# --------------------------------------------------------------------------------------------------
# What each mode measures
# --------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """Shapes and time caps (seconds) of one report mode."""

    mode: str
    device: str
    caps: dict[str, float]
    tri_att_lengths: tuple[int, ...]
    tri_att_heads: int
    tri_att_dim: int
    tri_mul_lengths: tuple[int, ...]
    tri_mul_channels: int
    rot_length: int
    rot_heads: int
    rot_dim: int
    ln_shapes: tuple[tuple[int, int, str], ...]  # (rows, width, dtype)
    matmul_n: int
    copy_bytes: int
    e2e_config: str
    e2e_overrides: dict[str, Any]
    e2e_lengths: tuple[int, ...]
    max_len_start: int
    max_len_ceiling: int
    max_len_resolution: int
    agreement_length: int = 128
    bench_warmup_ms: int = 25
    bench_rep_ms: int = 100
    cpu_repeats: int = 3
    kernel_tests: tuple[str, ...] = KERNEL_TEST_FILES


def make_plan(mode: str) -> Plan:
    """``full`` (< 10 min), ``quick`` (~2 min) or ``cpu-smoke`` (tiny shapes on CPU, seconds)."""
    if mode == "full":
        return Plan(
            mode, "cuda",
            caps={"kernel_tests": 100, "peaks": 10, "ops": 110, "end_to_end": 80, "backend_agreement": 20,
                  "max_length": 40, "end_to_end_transformers": 70},
            tri_att_lengths=(256, 512, 1024, 2048), tri_att_heads=4, tri_att_dim=32,
            tri_mul_lengths=(256, 512, 1024, 2048), tri_mul_channels=128,
            rot_length=1024, rot_heads=40, rot_dim=64,
            ln_shapes=((1024 * 1024, 128, "float32"), (16384, 1024, "float32"), (16384, 2560, "float16")),
            matmul_n=8192, copy_bytes=1 << 30,
            e2e_config="esmfold_v1", e2e_overrides={}, e2e_lengths=(128, 256, 384, 512, 1024),
            max_len_start=1024, max_len_ceiling=16384, max_len_resolution=128,
        )  # fmt: skip
    if mode == "quick":
        return Plan(
            mode, "cuda",
            caps={"kernel_tests": 32, "peaks": 8, "ops": 30, "end_to_end": 25, "backend_agreement": 10,
                  "max_length": 10, "end_to_end_transformers": 20},
            tri_att_lengths=(256, 512), tri_att_heads=4, tri_att_dim=32,
            tri_mul_lengths=(256, 512), tri_mul_channels=128,
            rot_length=1024, rot_heads=40, rot_dim=64,
            ln_shapes=((256 * 256, 128, "float32"), (4096, 1024, "float32"), (4096, 2560, "float16")),
            matmul_n=4096, copy_bytes=1 << 28,
            e2e_config="esmfold_v1", e2e_overrides={}, e2e_lengths=(128, 256),
            max_len_start=512, max_len_ceiling=4096, max_len_resolution=256,
            bench_warmup_ms=10, bench_rep_ms=30,
        )  # fmt: skip
    if mode == "cpu-smoke":
        return Plan(
            mode, "cpu",
            caps={"kernel_tests": 30, "peaks": 3, "ops": 30, "end_to_end": 10, "backend_agreement": 60,
                  "max_length": 5, "end_to_end_transformers": 10},
            tri_att_lengths=(8, 12), tri_att_heads=2, tri_att_dim=16,
            tri_mul_lengths=(8, 12), tri_mul_channels=16,
            rot_length=16, rot_heads=2, rot_dim=16,
            ln_shapes=((64, 32, "float32"), (16, 48, "float32")),
            matmul_n=128, copy_bytes=1 << 20,
            e2e_config="tiny", e2e_overrides={}, e2e_lengths=(8, 12),
            max_len_start=8, max_len_ceiling=16, max_len_resolution=4, agreement_length=8,
            cpu_repeats=2,
        )  # fmt: skip
    raise ValueError(f"unknown mode {mode!r}: full, quick or cpu-smoke")


# --------------------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------------------
class TimeCap(Exception):
    """Raised when a step would run past its section's time cap."""


class Deadline:
    """The time left to one section."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def require(self, seconds: float, what: str) -> None:
        if self.left() < seconds:
            raise TimeCap(f"{what}: needs ~{seconds:.1f} s, {max(self.left(), 0):.1f} s left")


def time_ms(fn: Callable[[], Any], device: torch.device, plan: Plan) -> float:
    """Median milliseconds of ``fn()``: ``do_bench`` on CUDA, repeated wall clock on CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=plan.bench_warmup_ms, rep=plan.bench_rep_ms, return_mode="median"))
    fn()  # warm-up: first-call allocation and dispatch
    times = []
    for _ in range(max(1, plan.cpu_repeats)):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return times[len(times) // 2]


def wall_seconds(fn: Callable[[], Any], device: torch.device) -> float:
    """One synchronised wall-clock run (for runs of seconds, where do_bench's repeats cost too much)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return None


def is_oom(err: BaseException) -> bool:
    """CUDA (or Triton shared-memory) out-of-memory, as opposed to a bug."""
    if isinstance(err, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    text = str(err).lower()
    return "out of memory" in text or "outofresources" in type(err).__name__.lower()


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------
# Section 6: environment
# --------------------------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def device_slug(name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def section_env(plan: Plan, device: torch.device, ctx: dict) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "device": device_name(device),
        "device_type": device.type,
        "mode": plan.mode,
    }
    for mod in ("triton", "transformers", "trifast", "cuequivariance_torch"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as err:  # absent peers are a fact of this machine, not an error
            info[mod] = f"not importable: {type(err).__name__}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            capability=f"sm_{props.major}{props.minor}",
            memory_gb=round(props.total_memory / 1e9, 2),
            multiprocessors=props.multi_processor_count,
            allow_tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        )
    return info


# --------------------------------------------------------------------------------------------------
# Section 1: kernel tests
# --------------------------------------------------------------------------------------------------
_OUTCOME = re.compile(r"\s(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")


def count_outcomes(log: str) -> dict[str, int]:
    """Per-outcome counts from ``pytest -v`` lines (``path::test[id] PASSED [ 10%]``).

    Read line by line so a run cut off by the time cap still counts what it finished.
    """
    counts = {k: 0 for k in ("passed", "failed", "skipped", "error", "xfail", "xpass")}
    for line in log.splitlines():
        if "::" not in line:
            continue
        match = _OUTCOME.search(line)
        if match:
            counts[match.group(1).lower()] += 1
    return counts


def section_kernel_tests(plan: Plan, device: torch.device, ctx: dict, deadline: Deadline) -> dict[str, Any]:
    files = list(ctx.get("kernel_tests") or plan.kernel_tests)
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "--no-header", "-rN", *files]
    start = time.perf_counter()
    timed_out = False
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(deadline.left(), 1))
        log, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        log, rc, timed_out = out, None, True
    counts = count_outcomes(log)
    failed = [line.split()[0] for line in log.splitlines() if "::" in line and " FAILED" in line]
    return {
        "files": files,
        **counts,
        "returncode": rc,
        "timed_out": timed_out,
        "seconds": round(time.perf_counter() - start, 1),
        "failed_tests": failed[:50],
        "log_tail": log[-3000:],
    }


# --------------------------------------------------------------------------------------------------
# Section 2: peaks
# --------------------------------------------------------------------------------------------------
def section_peaks(plan: Plan, device: torch.device, ctx: dict, deadline: Deadline) -> dict[str, Any]:
    matmul: dict[str, float] = {}
    n = plan.matmul_n
    for name in ("bfloat16", "float16", "float32"):
        deadline.require(0.5, f"matmul peak {name}")
        dtype = getattr(torch, name)
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        ms = time_ms(lambda: torch.matmul(a, b), device, plan)
        matmul[name] = 2.0 * n**3 / (ms * 1e-3) / 1e12
        del a, b
    elems = plan.copy_bytes // 4
    x = torch.empty(elems, device=device, dtype=torch.float32).uniform_()
    ms = time_ms(lambda: x.clone(), device, plan)
    copy_gbs = 2.0 * x.numel() * 4 / (ms * 1e-3) / 1e9  # read + write
    del x
    free_memory(device)
    ctx["peaks"] = {"matmul_tflops": matmul, "copy_gbs": copy_gbs}
    return {"matmul_n": n, "matmul_tflops": matmul, "copy_bytes": plan.copy_bytes, "copy_gbs": copy_gbs,
            "note": "matmul with torch defaults (fp32 without TF32 unless allow_tf32 is on)"}


# --------------------------------------------------------------------------------------------------
# Section 3: ops
# --------------------------------------------------------------------------------------------------
@dataclass
class OpCase:
    """One op at one shape: inputs per provider, the FLOPs and the compulsory bytes it moves."""

    op: str
    shape: dict[str, Any]
    dtype: torch.dtype
    flops: float
    bytes: float
    providers: dict[str, Callable[[], Callable[[], Any]]] = field(default_factory=dict)
    skip: dict[str, str] = field(default_factory=dict)
    # The float64 reference on the providers' own inputs (every provider draws the same ones) and how to
    # pick the part of a provider's output it covers (row-separable ops check a slice at large sizes).
    exact: Callable[[], torch.Tensor] | None = None
    select: Callable[[torch.Tensor], torch.Tensor] = lambda out: out
    untimed: set[str] = field(default_factory=set)  # providers run for their errors only (interpreter)


# Bytes the float64 reference may use for the error figures of one case.
def _exact_budget(device: torch.device) -> float:
    if device.type == "cuda":
        return 0.4 * torch.cuda.mem_get_info(device)[0]
    return 256e6


def _errors(out: torch.Tensor, exact: torch.Tensor) -> dict[str, float]:
    """``max_abs_err`` and ``max_rel_err`` (max |out - exact| / max |exact|, as the tests measure)."""
    diff = (out.double() - exact).abs().max().item()
    return {"max_abs_err": diff, "max_rel_err": diff / max(exact.abs().max().item(), 1e-30)}


def _peer(name: str):
    try:
        return __import__(name), None
    except Exception as err:
        return None, f"{name} not importable ({type(err).__name__})"


def _ours(module: str):
    import importlib

    return importlib.import_module(f"fastfold_kernels.{module}")


def _add_ours(case: OpCase, module: str, fn_name: str, call: Callable[[Callable], Callable[[], Any]],
              device: torch.device) -> None:
    """Register our three implementations of ``fn_name``. On the CPU triton runs through the interpreter
    for its error figures only (untimed), or is skipped where the kernels were not built for it."""
    from fastfold_kernels.utils import interpreting

    mod = _ours(module)
    for provider, suffix in (("triton", ""), ("torch", "_torch"), ("reference", "_reference")):
        if provider == "triton" and device.type != "cuda":
            if not interpreting():
                case.skip[provider] = "triton on CPU needs TRITON_INTERPRET=1 at import: not run"
                continue
            case.untimed.add(provider)
        fn = getattr(mod, fn_name + suffix)
        case.providers[provider] = (lambda f=fn: call(f))


def triangle_attention_case(L: int, H: int, D: int, dtype: torch.dtype, device: torch.device) -> OpCase:
    """AlphaFold2 Algorithms 13/14 core: q, k, v [1, L, L, H, D], bias [1, H, L, L], mask [1, L, L]."""
    B, eb = 1, torch.finfo(dtype).bits // 8
    flops = 4.0 * B * L * L * L * H * D  # QK^T and PV, 2 FLOPs per multiply-add
    nbytes = 4.0 * B * L * L * H * D * eb + B * H * L * L * eb + B * L * L
    case = OpCase("triangle_attention", {"B": B, "L": L, "H": H, "D": D}, dtype, flops, nbytes)
    gen = torch.Generator(device=device)

    def inputs():
        gen.manual_seed(L)
        q, k, v = (torch.randn(B, L, L, H, D, device=device, dtype=dtype, generator=gen) for _ in range(3))
        bias = torch.randn(B, H, L, L, device=device, dtype=dtype, generator=gen)
        mask = torch.rand(B, L, L, device=device, generator=gen) > 0.1  # some keys masked
        return q, k, v, bias, mask

    def ours(fn):
        q, k, v, bias, mask = inputs()
        return lambda: fn(q, k, v, bias, mask)

    _add_ours(case, "triangle_attention", "triangle_attention", ours, device)
    # Rows are independent: the oracle covers as many as its [rows, H, L, L] float64 scores allow.
    rows = max(1, min(L, int(_exact_budget(device) // (3 * H * L * L * 8))))

    def exact():
        from fastfold_kernels.triangle_attention import triangle_attention_reference

        q, k, v, bias, mask = inputs()
        return triangle_attention_reference(*(t[:, :rows].double() for t in (q, k, v)), bias.double(), mask[:, :rows])

    case.exact, case.select = exact, (lambda out: out[:, :rows])
    case.shape["rows_checked"] = rows
    # naive logits [B, L, H, L, L] in fp32, plus softmax: skip where they cannot fit
    case.reference_bytes = 2.0 * B * L * H * L * L * 4  # type: ignore[attr-defined]
    if device.type == "cuda":
        trifast, why = _peer("trifast")
        if trifast is None:
            case.skip["trifast"] = why
        else:
            def trifast_call():
                q, k, v, bias, mask = inputs()
                # trifast's layout: [B, H, L, L, D]; the permuted copies are made outside the timing
                qh, kh, vh = (t.permute(0, 3, 1, 2, 4).contiguous() for t in (q, k, v))
                pad = ~mask  # trifast masks where True
                return lambda: trifast.triangle_attention(qh, kh, vh, bias, pad)

            case.providers["trifast"] = trifast_call
        cueq, why = _peer("cuequivariance_torch")
        if cueq is None:
            case.skip["cuequivariance"] = why
        else:
            def cueq_call():
                q, k, v, bias, mask = inputs()
                # cuEquivariance's layout: q/k/v [B, N, H, Q, D], bias [B, 1, H, Q, K], mask [B, N, 1, 1, K]
                qc, kc, vc = (t.permute(0, 1, 3, 2, 4).contiguous() for t in (q, k, v))
                bc = bias[:, None].float().contiguous()
                mc = mask[:, :, None, None, :]
                return lambda: cueq.triangle_attention(qc, kc, vc, bc, mc)

            case.providers["cuequivariance"] = cueq_call
    return case


def triangle_multiplication_case(L: int, c: int, dtype: torch.dtype, device: torch.device) -> OpCase:
    """AlphaFold2 Algorithm 11 (outgoing) at c_z = c_hidden = c: z [1, L, L, c], mask [1, L, L]."""
    B, eb = 1, torch.finfo(dtype).bits // 8
    proj = 2.0 * L * L * c * (4 * c + c)  # a_p, a_g, b_p, b_g and the output gate g
    flops = B * (proj + 2.0 * L**3 * c + 2.0 * L * L * c * c)  # + triangle product + output projection
    nbytes = B * (2.0 * L * L * c * eb + L * L * eb)
    case = OpCase("triangle_multiplicative_update", {"B": B, "L": L, "c_z": c, "c_hidden": c}, dtype,
                  flops, nbytes)
    gen = torch.Generator(device=device)

    def inputs():
        gen.manual_seed(L)
        z = torch.randn(B, L, L, c, device=device, dtype=dtype, generator=gen)
        mask = (torch.rand(B, L, L, device=device, generator=gen) > 0.1).to(dtype)
        return z, mask, tri_mul_weights(c, c, device, dtype, gen)

    def ours(fn):
        z, mask, w = inputs()
        return lambda: fn(z, mask, w, True)

    _add_ours(case, "triangle_multiplicative_update", "triangle_multiplicative_update", ours, device)
    # The product couples every row: the oracle runs whole, about a dozen float64 pair tensors, if they fit.
    if 12.0 * B * L * L * c * 8 <= _exact_budget(device):
        def exact():
            from fastfold_kernels.triangle_multiplicative_update import triangle_multiplicative_update_reference

            z, mask, w = inputs()
            return triangle_multiplicative_update_reference(z.double(), mask.double(),
                                                            type(w)(*(t.double() for t in w)), True)

        case.exact = exact
    case.reference_bytes = 8.0 * B * L * L * c * 4  # type: ignore[attr-defined]
    if device.type == "cuda":
        cueq, why = _peer("cuequivariance_torch")
        if cueq is None:
            case.skip["cuequivariance"] = why
        else:
            def cueq_call():
                import inspect

                z, mask, w = inputs()
                kwargs = dict(
                    direction="outgoing", mask=mask,
                    norm_in_weight=w.ln_in_weight, norm_in_bias=w.ln_in_bias,
                    p_in_weight=torch.cat([w.a_p_weight, w.b_p_weight]),
                    g_in_weight=torch.cat([w.a_g_weight, w.b_g_weight]),
                    norm_out_weight=w.ln_out_weight, norm_out_bias=w.ln_out_bias,
                    p_out_weight=w.z_weight, g_out_weight=w.g_weight,
                )  # fmt: skip
                accepted = inspect.signature(cueq.triangle_multiplicative_update).parameters
                if "p_in_bias" in accepted:  # newer cuEquivariance takes the biases too
                    kwargs.update(
                        p_in_bias=torch.cat([w.a_p_bias, w.b_p_bias]),
                        g_in_bias=torch.cat([w.a_g_bias, w.b_g_bias]),
                        p_out_bias=w.z_bias, g_out_bias=w.g_bias,
                    )  # fmt: skip
                return lambda: cueq.triangle_multiplicative_update(z, **kwargs)

            case.providers["cuequivariance"] = cueq_call
    return case


def rotary_attention_case(L: int, H: int, D: int, dtype: torch.dtype, device: torch.device) -> OpCase:
    """ESM-2 self-attention core with rotary embeddings: q, k, v [1, L, H, D]."""
    B, eb = 1, torch.finfo(dtype).bits // 8
    flops = 4.0 * B * H * L * L * D
    nbytes = 4.0 * B * L * H * D * eb + 2.0 * L * D * 4
    case = OpCase("rotary_attention", {"B": B, "L": L, "H": H, "D": D}, dtype, flops, nbytes)
    gen = torch.Generator(device=device)

    def inputs():
        gen.manual_seed(L)
        q, k, v = (torch.randn(B, L, H, D, device=device, dtype=dtype, generator=gen) for _ in range(3))
        return q, k, v, *rotary_tables(L, D, device)

    def ours(fn):
        args = inputs()
        return lambda: fn(*args)

    _add_ours(case, "rotary_attention", "rotary_attention", ours, device)

    def exact():
        from fastfold_kernels.rotary_attention import rotary_attention_reference

        q, k, v, cos, sin = inputs()
        return rotary_attention_reference(q.double(), k.double(), v.double(), cos, sin)

    case.exact = exact
    case.reference_bytes = 3.0 * B * H * L * L * 4  # type: ignore[attr-defined]
    return case


def layer_norm_case(rows: int, width: int, dtype: torch.dtype, device: torch.device) -> OpCase:
    """LayerNorm over the last dim of x [rows, width] (the pair, trunk-sequence and LM widths)."""
    eb = torch.finfo(dtype).bits // 8
    flops = 8.0 * rows * width  # nominal: mean, variance, normalise, affine
    nbytes = 2.0 * rows * width * eb + 2.0 * width * eb
    case = OpCase("layer_norm", {"rows": rows, "C": width}, dtype, flops, nbytes)
    gen = torch.Generator(device=device)

    def inputs():
        gen.manual_seed(width)
        x = 3.0 * torch.randn(rows, width, device=device, generator=gen).to(dtype)
        w = (1.0 + 0.2 * torch.randn(width, device=device, generator=gen)).to(dtype)
        b = (0.2 * torch.randn(width, device=device, generator=gen)).to(dtype)
        return x, w, b

    def ours(fn):
        x, w, b = inputs()
        return lambda: fn(x, w, b, 1e-5)

    _add_ours(case, "layer_norm", "layer_norm", ours, device)

    def exact():
        from fastfold_kernels.layer_norm import layer_norm_reference

        return layer_norm_reference(*(t.double() for t in inputs()), 1e-5)

    case.exact = exact
    case.reference_bytes = 4.0 * rows * width * 4  # type: ignore[attr-defined]
    return case


def op_cases(plan: Plan, device: torch.device) -> list[Callable[[], OpCase]]:
    """Deferred case builders, so a broken op module only loses its own rows."""
    on_gpu = device.type == "cuda"
    half = torch.bfloat16 if on_gpu else torch.float32
    lm_half = torch.float16 if on_gpu else torch.float32
    cases: list[Callable[[], OpCase]] = []
    for L in plan.tri_att_lengths:
        cases.append(lambda L=L: triangle_attention_case(L, plan.tri_att_heads, plan.tri_att_dim, half, device))
    for L in plan.tri_mul_lengths:
        cases.append(lambda L=L: triangle_multiplication_case(L, plan.tri_mul_channels, half, device))
    cases.append(lambda: rotary_attention_case(plan.rot_length, plan.rot_heads, plan.rot_dim, lm_half, device))
    for rows, width, dt in plan.ln_shapes:
        dtype = getattr(torch, dt) if on_gpu else torch.float32
        cases.append(lambda r=rows, w=width, d=dtype: layer_norm_case(r, w, d, device))
    return cases


def _fits(case: OpCase, provider: str, device: torch.device) -> str | None:
    """Why the naive reference is not run at this size (its O(L^3) intermediates), or None."""
    if provider != "reference" or device.type != "cuda":
        return None
    need = getattr(case, "reference_bytes", 0.0)
    free, _ = torch.cuda.mem_get_info(device)
    if need > 0.6 * free:
        return f"reference needs ~{need / 1e9:.0f} GB of intermediates, {free / 1e9:.0f} GB free"
    return None


def measure_case(case: OpCase, plan: Plan, device: torch.device, peaks: dict | None,
                 deadline: Deadline) -> list[dict[str, Any]]:
    rows = []
    dtype_name = str(case.dtype).replace("torch.", "")
    base = {"op": case.op, "shape": case.shape, "dtype": dtype_name, "flops": case.flops, "bytes": case.bytes}
    for provider, why in case.skip.items():
        rows.append({**base, "provider": provider, "status": "skipped", "reason": why})
    exact = _exact(case, device)
    for provider, build in case.providers.items():
        row = {**base, "provider": provider, "timed": provider not in case.untimed}
        try:
            deadline.require(1.0, f"{case.op} {case.shape} {provider}")
            why = _fits(case, provider, device)
            if why:
                rows.append({**row, "status": "skipped", "reason": why})
                continue
            fn = build()
            row["status"] = "ok"
            if row["timed"]:
                ms = time_ms(fn, device, plan)
                tflops = case.flops / (ms * 1e-3) / 1e12
                gbs = case.bytes / (ms * 1e-3) / 1e9
                row.update(ms=ms, tflops=tflops, gbs=gbs)
                if peaks:
                    peak = peaks["matmul_tflops"].get(dtype_name)
                    row["frac_matmul_peak"] = tflops / peak if peak else None
                    row["frac_copy_peak"] = gbs / peaks["copy_gbs"] if peaks.get("copy_gbs") else None
            else:
                row["reason"] = "Triton's CPU interpreter: errors only, not timed"
            if isinstance(exact, torch.Tensor):
                row.update(_errors(case.select(fn()), exact))
            else:
                row["err_skipped"] = exact
        except TimeCap as err:
            row.update(status="time cap", reason=str(err))
        except Exception as err:
            row.update(status="oom" if is_oom(err) else "error", reason=f"{type(err).__name__}: {err}"[:500])
        finally:
            fn = None
            free_memory(device)
        rows.append(row)
    return rows


def _exact(case: OpCase, device: torch.device) -> torch.Tensor | str:
    """The case's float64 reference output, or why there is none."""
    if case.exact is None:
        return "the float64 reference does not fit in memory at this size"
    try:
        return case.exact()
    except Exception as err:
        free_memory(device)
        return f"float64 reference failed: {type(err).__name__}: {err}"[:300]


def section_ops(plan: Plan, device: torch.device, ctx: dict, deadline: Deadline) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for build in op_cases(plan, device):
        try:
            case = build()
        except Exception as err:
            rows.append({"op": getattr(build, "__name__", "?"), "status": "error",
                         "reason": f"building the case: {type(err).__name__}: {err}"[:500]})
            continue
        rows.extend(measure_case(case, plan, device, ctx.get("peaks"), deadline))
    _add_speedups(rows)
    return rows


def _add_speedups(rows: list[dict[str, Any]]) -> None:
    """``speedup_vs_<provider>`` on each triton row: the other providers' ms / ours."""
    by_key: dict[str, dict[str, float]] = {}
    for r in rows:
        if r.get("status") == "ok" and r.get("timed"):
            by_key.setdefault(json.dumps([r["op"], r["shape"], r["dtype"]]), {})[r["provider"]] = r["ms"]
    for r in rows:
        if r.get("provider") == "triton" and r.get("status") == "ok" and r.get("timed"):
            for other, ms in by_key[json.dumps([r["op"], r["shape"], r["dtype"]])].items():
                if other != "triton":
                    r[f"speedup_vs_{other}"] = ms / r["ms"]


# --------------------------------------------------------------------------------------------------
# Sections 4 and 5: end to end, longest chain
# --------------------------------------------------------------------------------------------------
def _e2e_flops(config, L: int, passes: int) -> float | None:
    try:
        from esmfold_fast.benchmarking.flops import esmfold_flops

        return float(esmfold_flops(L, config, passes))
    except Exception:  # the FLOP model is optional for this report
        return None


def _backend_for(device: torch.device) -> str:
    return "triton" if device.type == "cuda" else "torch"


def build_ours(plan: Plan, device: torch.device):
    from esmfold_fast import ESMFold

    return ESMFold.from_config(plan.e2e_config, backend=_backend_for(device), device=device, **plan.e2e_overrides)


def build_shared_models(plan: Plan, device: torch.device):
    """Ours and transformers' ``EsmForProteinFolding`` with the same weights (every parameter randomised;
    transformers halves its LM, ours takes those fp16 values), or ours alone when transformers is missing.
    Returns (ours, transformers' model or None, what the weights are)."""
    try:
        import transformers  # noqa: F401
    except Exception as err:
        return build_ours(plan, device), None, f"ours alone, random (transformers not importable: {err})"
    from esmfold_fast import ESMFold, named_config

    config = named_config(plan.e2e_config, **plan.e2e_overrides)
    hf = randomize_parameters_(transformers_esmfold(config, device), seed=0)
    ours = ESMFold.from_transformers(hf, backend=_backend_for(device), device=device)
    return ours, hf, "shared: transformers' EsmForProteinFolding, every parameter randomised, loaded into ours"


def _fold_call(provider: str, model, seq: str, device: torch.device, num_recycles: int | None):
    if provider == "ours":
        return lambda: model.infer([seq], num_recycles=num_recycles)
    aatype, mask, pos = transformers_inputs(seq, device)
    return lambda: model(aatype, mask, position_ids=pos, num_recycles=num_recycles)


def _projected(history: list[tuple[int, float]], L: int) -> float:
    """Seconds at ``L`` extrapolated as L^3 (the trunk's triangle ops) from the last measured point."""
    if not history:
        return 0.0
    L0, t0 = history[-1]
    return t0 * (L / L0) ** 3


@torch.no_grad()
def run_end_to_end(provider: str, model, config, plan: Plan, device: torch.device,
                   deadline: Deadline) -> list[dict[str, Any]]:
    """Fold each length once after one warm-up at the smallest (Triton compiles there)."""
    passes = config.trunk.max_recycles  # num_recycles=None: max_recycles trunk passes
    rows: list[dict[str, Any]] = []
    history: list[tuple[int, float]] = []
    lengths = list(plan.e2e_lengths)
    warm = _fold_call(provider, model, random_sequence(lengths[0], 1), device, None)
    warm_s = wall_seconds(warm, device)
    for L in lengths:
        row: dict[str, Any] = {"provider": provider, "L": L, "passes": passes, "config": plan.e2e_config}
        if L == lengths[0]:
            row["warmup_s"] = warm_s
        try:
            deadline.require(_projected(history, L) * 1.2, f"{provider} L={L}")
            fn = _fold_call(provider, model, random_sequence(L), device, None)
            reset_peak_memory(device)
            seconds = wall_seconds(fn, device)
            history.append((L, seconds))
            flops = _e2e_flops(config, L, passes)
            row.update(status="ok", seconds=seconds, peak_memory_gb=peak_memory_gb(device), flops=flops,
                       tflops=flops / seconds / 1e12 if flops else None)
        except TimeCap as err:
            row.update(status="time cap", reason=str(err))
        except Exception as err:
            row.update(status="oom" if is_oom(err) else "error", reason=f"{type(err).__name__}: {err}"[:500])
            free_memory(device)
        rows.append(row)
    return rows


def section_end_to_end(plan: Plan, device: torch.device, ctx: dict, deadline: Deadline) -> list[dict]:
    model, hf, weights = build_shared_models(plan, device)
    if hf is not None:
        hf.to("cpu")  # off the device while ours runs (the longest-chain search wants all of it)
    ctx.update(ours_model=model, hf_model=hf)
    rows = run_end_to_end("ours", model, model.config, plan, device, deadline)
    for row in rows:
        row["weights"] = weights
    ctx["e2e_rows"] = rows
    return rows


def _agreement(a: dict, b: dict) -> dict[str, float]:
    """Position (Angstrom, over existing atoms of the last structure-module block), pLDDT and pTM differences."""
    exists = a["atom14_atom_exists"].bool()
    pos = (a["positions"][-1] - b["positions"][-1]).norm(dim=-1)[exists]
    return {"max_pos_err": pos.max().item(), "mean_pos_err": pos.mean().item(),
            "max_plddt_err": (a["plddt"] - b["plddt"]).abs().max().item(),
            "ptm_err": (a["ptm"] - b["ptm"]).abs().max().item()}


@torch.no_grad()
def section_backend_agreement(plan: Plan, device: torch.device, ctx: dict, deadline: Deadline) -> list[dict]:
    """``backend="triton"`` against ``backend="torch"`` on the same model and sequence: one trunk pass (the
    kernels' own error) and ``max_recycles`` passes (recycling amplifies rounding). On the CPU the Triton
    kernels run through the interpreter."""
    from fastfold_kernels.utils import interpreting

    if device.type != "cuda" and not interpreting():
        return [{"status": "skipped", "reason": "triton on CPU needs TRITON_INTERPRET=1 at import"}]
    model = ctx.get("ours_model") or build_ours(plan, device)
    before = model.backend.name
    seq = random_sequence(plan.agreement_length, 3)
    rows = []
    try:
        for num_recycles in (0, None)[: 1 + (model.trunk.num_passes(None) > 1)]:
            passes = model.trunk.num_passes(num_recycles)
            deadline.require(1.0, f"agreement with {passes} passes")
            outs = {}
            for backend in ("triton", "torch"):
                model.set_backend(backend)
                outs[backend] = model.infer([seq], num_recycles=num_recycles)
            rows.append({"status": "ok", "L": plan.agreement_length, "passes": passes,
                         **_agreement(outs["triton"], outs["torch"])})
    finally:
        model.set_backend(before)
    return rows


@torch.no_grad()
def section_max_length(plan: Plan, device: torch.device, ctx: dict, deadline: Deadline) -> dict[str, Any]:
    """Longest L our model folds in one trunk pass: double until a failure, then bisect."""
    model = ctx.get("ours_model") or build_ours(plan, device)
    trials: list[dict[str, Any]] = []
    history: list[tuple[int, float]] = []
    for r in ctx.get("e2e_rows", []):  # one-pass time ~ passes-time / passes, to project the first trial
        if r.get("status") == "ok":
            history.append((r["L"], r["seconds"] / max(r["passes"], 1)))

    def attempt(L: int) -> bool | None:
        """True fits, False out of memory, None not tried (time cap)."""
        projected = _projected(history, L)
        if deadline.left() < projected * 1.2 + 1.0:
            trials.append({"L": L, "status": "time cap", "projected_s": projected})
            return None
        reset_peak_memory(device)
        try:
            seconds = wall_seconds(_fold_call("ours", model, random_sequence(L, 2), device, 0), device)
        except Exception as err:
            if not is_oom(err):
                raise
            trials.append({"L": L, "status": "oom"})
            free_memory(device)
            return False
        history.append((L, seconds))
        trials.append({"L": L, "status": "ok", "seconds": seconds, "peak_memory_gb": peak_memory_gb(device)})
        return True

    ok, bad, limited_by = 0, None, "ceiling"
    L = plan.max_len_start
    while L <= plan.max_len_ceiling:
        result = attempt(L)
        if result is None:
            limited_by = "time cap"
            break
        if not result:
            bad, limited_by = L, "memory"
            break
        ok, L = L, L * 2
    if bad is not None:
        while bad - ok > plan.max_len_resolution:
            mid = (ok + bad) // 2
            result = attempt(mid)
            if result is None:
                break
            ok, bad = (mid, bad) if result else (ok, mid)
    out = {"longest_ok": ok or None, "first_failure": bad, "limited_by": limited_by, "passes": 1,
           "trials": trials, "resolution": plan.max_len_resolution}
    if device.type == "cuda" and ok:
        # Peak memory grows ~L^2 (pair state); what the whole card would hold, flagged as an estimate.
        used = max((t["peak_memory_gb"] for t in trials if t.get("L") == ok), default=None)
        total = torch.cuda.get_device_properties(device).total_memory / 1e9
        if used:
            weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
            act = max(used - weights, 1e-3)
            out["estimated_longest_by_memory"] = int(ok * math.sqrt(max(total - weights, act) / act))
    return out


def section_end_to_end_transformers(plan: Plan, device: torch.device, ctx: dict, deadline: Deadline) -> list:
    model = ctx.pop("ours_model", None)
    config = model.config if model is not None else None
    del model
    free_memory(device)
    hf, weights = ctx.pop("hf_model", None), "shared with ours (end_to_end)"
    if config is None:
        from esmfold_fast import named_config

        config = named_config(plan.e2e_config, **plan.e2e_overrides)
    try:
        import transformers  # noqa: F401
    except Exception as err:
        return [{"provider": "transformers", "status": "skipped", "reason": f"not importable: {err}"}]
    if hf is None:  # its __init__ halves the LM (fp16_esm), as the reference
        hf, weights = transformers_esmfold(config, device), "transformers' own initialisation, not ours"
    hf.to(device)
    try:
        rows = run_end_to_end("transformers", hf, config, plan, device, deadline)
        for row in rows:
            row["weights"] = weights
        return rows
    finally:
        del hf
        free_memory(device)


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------
SECTIONS: tuple[tuple[str, Callable], ...] = (
    ("kernel_tests", section_kernel_tests),
    ("peaks", section_peaks),
    ("ops", section_ops),
    ("end_to_end", section_end_to_end),
    ("backend_agreement", section_backend_agreement),
    ("max_length", section_max_length),
    ("end_to_end_transformers", section_end_to_end_transformers),
)


def run_sections(plan: Plan, device: torch.device, only: Sequence[str] | None = None,
                 kernel_tests: Sequence[str] | None = None) -> dict[str, Any]:
    """Every section under its cap; a section that raises is recorded and the next one runs."""
    ctx: dict[str, Any] = {"kernel_tests": list(kernel_tests) if kernel_tests else None}
    report: dict[str, Any] = {"schema": "esmfold-fast/gpu_report/1", "mode": plan.mode,
                              "plan": dataclasses.asdict(plan), "sections": {}}
    report["env"] = section_env(plan, device, ctx)
    for name, fn in SECTIONS:
        if only and name not in only:
            report["sections"][name] = {"status": "not selected"}
            continue
        start = time.perf_counter()
        deadline = Deadline(plan.caps[name])
        status: dict[str, Any] = {"cap_s": plan.caps[name]}
        try:
            report[name] = fn(plan, device, ctx, deadline)
            status["status"] = "ok"
        except TimeCap as err:
            status.update(status="time cap", error=str(err))
        except Exception as err:
            status.update(status="error", error=f"{type(err).__name__}: {err}"[:1000],
                          traceback=traceback.format_exc()[-3000:])
            free_memory(device)
        status["seconds"] = round(time.perf_counter() - start, 2)
        report["sections"][name] = status
        print(f"[gpu_report] {name}: {status['status']} in {status['seconds']:.1f} s", flush=True)
    ctx.pop("ours_model", None)
    return report


def output_path(out_dir: Path, device: str, date: str) -> Path:
    """``gpu_report-<slug>-<date>.json``, with ``-2``, ``-3``... rather than overwriting a run."""
    base = out_dir / f"gpu_report-{device_slug(device)}-{date}"
    path, n = base.with_suffix(".json"), 2
    while path.exists():
        path, n = out_dir / f"{base.name}-{n}.json", n + 1
    return path


def _fmt(value: Any, spec: str = ".2f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def summary(report: dict[str, Any]) -> str:
    """The printed digest of a report."""
    env = report.get("env", {})
    lines = [f"esmfold-fast GPU report ({report.get('mode')}): {env.get('device')}, torch {env.get('torch')}, "
             f"triton {env.get('triton')}, {env.get('date')}"]
    kt = report.get("kernel_tests")
    if kt:
        lines.append(f"kernel tests: {kt['passed']} passed, {kt['failed']} failed, {kt['skipped']} skipped, "
                     f"{kt['error']} errors{' (time cap)' if kt.get('timed_out') else ''}")
    peaks = report.get("peaks")
    if peaks:
        mm = ", ".join(f"{k} {_fmt(v, '.1f')}" for k, v in peaks["matmul_tflops"].items())
        lines.append(f"peaks: matmul TFLOP/s {mm}; copy {_fmt(peaks['copy_gbs'], '.0f')} GB/s")
    ops = report.get("ops") or []
    if ops:
        lines.append(f"{'op':<32}{'shape':<30}{'dtype':<10}{'provider':<16}{'ms':>10}{'TFLOP/s':>9}"
                     f"{'GB/s':>8}{'%mm':>6}{'%copy':>6}{'rel err':>10}")
        for r in ops:
            shape = ",".join(f"{k}={v}" for k, v in (r.get("shape") or {}).items())
            if r.get("status") != "ok":
                lines.append(f"{r.get('op', '?'):<32}{shape:<30}{r.get('dtype', '-'):<10}"
                             f"{r.get('provider', '-'):<16}  {r.get('status')}: {str(r.get('reason'))[:60]}")
                continue
            fm, fc = r.get("frac_matmul_peak"), r.get("frac_copy_peak")
            lines.append(f"{r['op']:<32}{shape:<30}{r['dtype']:<10}{r['provider']:<16}{_fmt(r.get('ms'), '.3f'):>10}"
                         f"{_fmt(r.get('tflops')):>9}{_fmt(r.get('gbs'), '.0f'):>8}{_fmt(fm and 100 * fm, '.0f'):>6}"
                         f"{_fmt(fc and 100 * fc, '.0f'):>6}{_fmt(r.get('max_rel_err'), '.1e'):>10}")
    for key in ("end_to_end", "end_to_end_transformers"):
        for r in report.get(key) or []:
            if r.get("status") == "ok":
                lines.append(f"e2e {r['provider']:<13} L={r['L']:<5} passes={r['passes']} {r['seconds']:.2f} s"
                             f" peak {_fmt(r.get('peak_memory_gb'))} GB  {_fmt(r.get('tflops'))} TFLOP/s")
            else:
                lines.append(f"e2e {r.get('provider')} L={r.get('L')}: {r.get('status')} {r.get('reason', '')}")
    for r in report.get("backend_agreement") or []:
        if r.get("status") == "ok":
            lines.append(f"triton vs torch, L={r['L']}, {r['passes']} pass(es): positions {r['max_pos_err']:.2e} A max, "
                         f"pLDDT {r['max_plddt_err']:.2e}, pTM {r['ptm_err']:.2e}")
    ml = report.get("max_length")
    if ml:
        lines.append(f"longest chain (one pass): {ml['longest_ok']} (first failure {ml['first_failure']}, "
                     f"limited by {ml['limited_by']}; estimate by memory {ml.get('estimated_longest_by_memory')})")
    for name, st in report.get("sections", {}).items():
        if st.get("status") not in ("ok", "not selected"):
            lines.append(f"section {name}: {st['status']}: {st.get('error', '')}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="about 2 minutes")
    mode.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU: the plumbing only")
    parser.add_argument("--sections", nargs="+", choices=[n for n, _ in SECTIONS], help="run only these")
    parser.add_argument("--kernel-tests", nargs="+", help="pytest targets instead of the four op test files")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "cpu-smoke" if args.cpu_smoke else "quick" if args.quick else "full"
    plan = make_plan(mode)
    if plan.device == "cuda" and not torch.cuda.is_available():
        print("gpu_report: no CUDA device; run with --cpu-smoke to check the plumbing", file=sys.stderr)
        return 2
    device = torch.device(plan.device)
    if plan.device == "cpu":  # the triton rows run through the interpreter (read when the kernels are imported)
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if str(ROOT) not in sys.path:  # esmfold_fast/fastfold_kernels from this checkout
        sys.path.insert(0, str(ROOT))
    start = time.perf_counter()
    report = run_sections(plan, device, args.sections, args.kernel_tests)
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    path = output_path(args.out, report["env"]["device"], report["env"]["date"][:10])
    path.write_text(json.dumps(report, indent=1, default=str))
    print(summary(report))
    print(f"\nwrote {path} in {report['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
