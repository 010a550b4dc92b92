"""ESM-2 alone, in process: ours vs fair-esm's ``ESM2`` with the same random weights (one fair-esm
raw-layout checkpoint), 150M shape at L=1024 (the issue 4 target shape), fp32."""

import pytest

from esmfold_fast.benchmarking.flops import esm2_costs, total
from esmfold_fast.benchmarking.measure import build_esm2_forward, esm2_spec, prepare_esm2_checkpoint
from esmfold_fast.config import ESM2Config

PROVIDERS = ("ours", "fair-esm")
# (ESM-2 size, L)
CASES = {"150M_L1024": ("esm2_t30_150M_UR50D", 1024), "150M_L256": ("esm2_t30_150M_UR50D", 256)}
CUDA_CASES = {"650M_L1024": ("esm2_t33_650M_UR50D", 1024)}
QUICK_CASES = {"8M_L128": ("esm2_t6_8M_UR50D", 128)}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_esm2_forward(benchmark, bench_env, provider, case):
    name, L = case
    cfg = ESM2Config.named(name)
    forward = build_esm2_forward(esm2_spec(provider, prepare_esm2_checkpoint(cfg), L, device=bench_env.device))
    mem = bench_env.measure(benchmark, forward, rounds=10 if bench_env.device == "cuda" else 3,
                            inference_mode=True)
    cost = total(esm2_costs(L, cfg))
    bench_env.record(benchmark, flops=cost.flops, bytes_moved=cost.bytes, dtype="float32", memory=mem,
                     provider=provider, L=L, model=name)
