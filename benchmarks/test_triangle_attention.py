"""Triangle attention core (AlphaFold2 Algorithms 13/14; H=4, D=32 in ESMFold's trunk) and the trunk's
sequence attention with pair bias (I=1, H=32): reference vs torch vs triton."""

import pytest
import torch

from esmfold_fast.benchmarking.flops import attention_cost

ta = pytest.importorskip("fastfold_kernels.triangle_attention",
                         reason="fastfold_kernels.triangle_attention not built yet")

PROVIDERS = ("reference", "torch", "triton")
DTYPES = (torch.float32, torch.bfloat16) if torch.cuda.is_available() else (torch.float32,)
# (I rows, J, H, D)
CASES = {"tri_L128": (128, 128, 4, 32), "tri_L256": (256, 256, 4, 32), "seq_L512": (1, 512, 32, 32)}
CUDA_CASES = {"tri_L512": (512, 512, 4, 32), "tri_L1024": (1024, 1024, 4, 32)}
QUICK_CASES = {"tri_L64": (64, 64, 4, 32)}


def _op(provider):
    return {"reference": ta.triangle_attention_reference, "torch": ta.triangle_attention_torch,
            "triton": ta.triangle_attention}[provider]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_triangle_attention(benchmark, bench_env, provider, case, masked, dtype):
    bench_env.require(provider)
    I, J, H, D = case
    if provider == "reference" and I * H * J * J > 2 ** 31:
        pytest.skip("CUDA size: the reference materialises [B, I, H, J, J] logits, too large to time")
    dev = bench_env.device
    q, k, v = (torch.randn(1, I, J, 3, H, D, device=dev, dtype=dtype) * 2).unbind(3)  # projection views
    bias = torch.randn(1, H, J, J, device=dev, dtype=dtype) * 2
    mask = None
    if masked:
        mask = torch.ones(1, I, J, device=dev, dtype=dtype)
        mask[..., J - J // 8:] = 0
    fn = _op(provider)
    mem = bench_env.measure(benchmark, lambda: fn(q, k, v, bias, mask=mask),
                            rounds=20 if dev == "cuda" else 3, warmup_rounds=1)
    cost = attention_cost(I, J, J, H, D, q.element_size(), bias_values=H * J * J + (I * J if masked else 0))
    bench_env.record(benchmark, flops=cost.flops, bytes_moved=cost.bytes, dtype=dtype, memory=mem,
                     provider=provider, I=I, J=J, heads=H, head_dim=D)
