"""ESM-2 self-attention core (rotary + softmax attention): reference vs torch vs triton."""

import pytest
import torch

from esmfold_fast.benchmarking.flops import attention_cost
from esmfold_fast.benchmarking.measure import rotary_tables

ra = pytest.importorskip("fastfold_kernels.rotary_attention", reason="fastfold_kernels.rotary_attention not built yet")

PROVIDERS = ("reference", "torch", "triton")
DTYPES = (torch.float32, torch.bfloat16) if torch.cuda.is_available() else (torch.float32,)
# (tokens, heads, head_dim): ESM-2 150M at L=1024, 3B at L=384, 35M (head dim 24) at L=512.
CASES = {"150M_L1024": (1026, 20, 32), "3B_L384": (386, 40, 64), "35M_L512": (514, 20, 24)}
QUICK_CASES = {"8M_L128": (130, 20, 16)}


def _op(provider):
    return {"reference": ra.rotary_attention_reference, "torch": ra.rotary_attention_torch,
            "triton": ra.rotary_attention}[provider]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "padmask"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_rotary_attention(benchmark, bench_env, provider, case, masked, dtype):
    bench_env.require(provider)
    T, H, D = case
    dev = bench_env.device
    # q, k, v as views of one projection output, as the model hands them over
    qkv = (torch.randn(1, T, 3, H, D, device=dev, dtype=dtype) * 2).unbind(2)
    cos, sin = rotary_tables(T, D, dev)
    pad = None
    if masked:
        pad = torch.zeros(1, T, dtype=torch.bool, device=dev)
        pad[:, T - T // 8:] = True
    fn = _op(provider)
    mem = bench_env.measure(benchmark, lambda: fn(*qkv, cos, sin, key_padding_mask=pad),
                            rounds=20 if dev == "cuda" else 3, warmup_rounds=1)
    cost = attention_cost(1, T, T, H, D, qkv[0].element_size())
    bench_env.record(benchmark, flops=cost.flops + 12.0 * T * H * D, bytes_moved=cost.bytes, dtype=dtype,
                     memory=mem, provider=provider, tokens=T, heads=H, head_dim=D)
