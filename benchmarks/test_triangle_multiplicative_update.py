"""Triangle multiplicative update (AlphaFold2 Algorithms 11/12, c_z = c_h = 128):
reference vs torch vs triton, outgoing and incoming."""

import pytest
import torch

from esmfold_fast.bench_flops import triangle_multiplication_cost

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


def _weights(c_z, c_h, device, dtype, gen):
    def r(*shape, centre=0.0, std=None):
        std = std if std is not None else shape[-1] ** -0.5
        return (centre + std * torch.randn(*shape, generator=gen)).to(device=device, dtype=dtype)

    return tm.TriMulWeights(
        ln_in_weight=r(c_z, centre=1.0, std=0.2), ln_in_bias=r(c_z, std=0.2),
        a_p_weight=r(c_h, c_z), a_p_bias=r(c_h, std=0.2), a_g_weight=r(c_h, c_z), a_g_bias=r(c_h, std=0.2),
        b_p_weight=r(c_h, c_z), b_p_bias=r(c_h, std=0.2), b_g_weight=r(c_h, c_z), b_g_bias=r(c_h, std=0.2),
        ln_out_weight=r(c_h, centre=1.0, std=0.2), ln_out_bias=r(c_h, std=0.2),
        z_weight=r(c_z, c_h), z_bias=r(c_z, std=0.2), g_weight=r(c_z, c_z), g_bias=r(c_z, std=0.2),
    )


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
    w = _weights(128, 128, dev, dtype, gen)
    fn = _op(provider)

    def run():
        out = fn(z, mask, w, outgoing=outgoing)
        bench_env.sync()
        return out

    with bench_env.Memory() as mem:
        run()
    benchmark.pedantic(run, rounds=20 if dev == "cuda" else 3, warmup_rounds=1)
    cost = triangle_multiplication_cost(L, 128, 128, z.element_size())
    bench_env.record(benchmark, flops=cost.flops, bytes_moved=cost.bytes, dtype=dtype, memory=mem,
                     provider=provider, L=L, outgoing=outgoing)
