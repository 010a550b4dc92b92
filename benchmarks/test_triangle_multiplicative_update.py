"""Triangle multiplicative update (AlphaFold2 Algorithms 11/12, c_z = c_h = 128):
reference vs torch vs triton, outgoing and incoming."""

import pytest
import torch

from esmfold_fast.benchmarking.flops import triangle_multiplication_cost
from esmfold_fast.benchmarking.measure import tri_mul_weights

tm = pytest.importorskip("fastfold_kernels.triangle_multiplicative_update",
                         reason="fastfold_kernels.triangle_multiplicative_update not built yet")

PROVIDERS = ("reference", "torch", "triton")
DTYPES = (torch.float32, torch.bfloat16) if torch.cuda.is_available() else (torch.float32,)
# (L, outgoing): incoming is timed at one length (same work as outgoing, transposed access).
CASES = {"L128_out": (128, True), "L256_out": (256, True), "L256_in": (256, False)}
CUDA_CASES = {"L512_out": (512, True), "L1024_out": (1024, True), "L1024_in": (1024, False)}
QUICK_CASES = {"L48_out": (48, True), "L48_in": (48, False)}


def _op(provider):
    return {"reference": tm.triangle_multiplicative_update_reference,
            "torch": tm.triangle_multiplicative_update_torch,
            "triton": tm.triangle_multiplicative_update}[provider]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_triangle_multiplicative_update(benchmark, bench_env, provider, case, dtype):
    bench_env.require(provider)
    L, outgoing = case
    dev = bench_env.device
    gen = torch.Generator().manual_seed(L)
    z = (torch.randn(1, L, L, 128, generator=gen) * 2).to(device=dev, dtype=dtype)
    mask = torch.ones(1, L, L, device=dev, dtype=dtype)
    mask[:, L - L // 8:, :] = 0
    mask[:, :, L - L // 8:] = 0
    w = tri_mul_weights(128, 128, dev, dtype, gen)  # drawn on the CPU generator after z
    fn = _op(provider)
    mem = bench_env.measure(benchmark, lambda: fn(z, mask, w, outgoing=outgoing),
                            rounds=20 if dev == "cuda" else 3, warmup_rounds=1)
    cost = triangle_multiplication_cost(L, 128, 128, z.element_size())
    bench_env.record(benchmark, flops=cost.flops, bytes_moved=cost.bytes, dtype=dtype, memory=mem,
                     provider=provider, L=L, outgoing=outgoing)
