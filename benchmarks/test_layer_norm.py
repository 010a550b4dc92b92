"""LayerNorm (and fused add + LayerNorm): reference vs torch vs triton at the widths the model uses."""

import pytest
import torch

from esmfold_fast.benchmarking.flops import layer_norm_cost

ln = pytest.importorskip("fastfold_kernels.layer_norm", reason="fastfold_kernels.layer_norm not built yet")

PROVIDERS = ("reference", "torch", "triton")
DTYPES = (torch.float32, torch.bfloat16) if torch.cuda.is_available() else (torch.float32,)
# (rows, C): the pair state at L=256 (c_z=128), the ESM-2 3B LM at L=1024, the trunk sequence state.
CASES = {"pair_L256": (256 * 256, 128), "lm3B_L1024": (1026, 2560), "seq_L1024": (1024, 1024)}
QUICK_CASES = {"pair_L64": (64 * 64, 128)}


def _op(provider):
    return {"reference": ln.layer_norm_reference, "torch": ln.layer_norm_torch, "triton": ln.layer_norm}[provider]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "add_norm"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_layer_norm(benchmark, bench_env, provider, case, residual, dtype):
    bench_env.require(provider)
    rows, C = case
    dev = bench_env.device
    x = torch.randn(rows, C, device=dev, dtype=dtype) * 3 + 1
    res = torch.randn_like(x) if residual else None
    w = 1 + 0.2 * torch.randn(C, device=dev, dtype=dtype)
    b = 0.2 * torch.randn(C, device=dev, dtype=dtype)
    fn = _op(provider)
    mem = bench_env.measure(benchmark, lambda: fn(x, w, b, 1e-5, residual=res),
                            rounds=20 if dev == "cuda" else 5, warmup_rounds=1)
    eb = x.element_size()
    cost = layer_norm_cost(rows, C, eb)
    moved = cost.bytes + (2 * rows * C * eb if residual else 0)  # read the residual, write the sum
    bench_env.record(benchmark, flops=cost.flops + (rows * C if residual else 0), bytes_moved=moved,
                     dtype=dtype, memory=mem, provider=provider, rows=rows, C=C)
