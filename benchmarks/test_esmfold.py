"""End to end, in process: ours (default backend) and our reference backend vs transformers'
``EsmForProteinFolding``, the same random weights (one saved checkpoint), 8M LM + one full-width
trunk block + the default structure module, one trunk pass, fp32."""

import pytest

from esmfold_fast.benchmarking.flops import esmfold_costs, total
from esmfold_fast.benchmarking.measure import build_fold, fold_spec, prepare_esmfold_checkpoint
from esmfold_fast.config import named_config

PROVIDERS = ("ours", "reference", "transformers")
CASES = {"L64": 64, "L128": 128, "L256": 256}
CUDA_CASES = {"L512": 512, "L1024": 1024}
QUICK_CASES = {"L32": 32}
CONFIG = named_config("esmfold_v1_8M", num_blocks=1)


@pytest.fixture(scope="module")
def checkpoint():
    return prepare_esmfold_checkpoint(CONFIG)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_esmfold_one_pass(benchmark, bench_env, checkpoint, provider, case):
    L = case
    if provider == "reference" and L > 256:
        pytest.skip("CUDA size: the reference backend materialises full triangle-attention logits")
    spec = fold_spec(provider, checkpoint, L, device=bench_env.device)
    fold = build_fold(spec)
    mem = bench_env.measure(benchmark, fold, rounds=5 if bench_env.device == "cuda" else 2, inference_mode=True)
    cost = total(esmfold_costs(L, CONFIG, 1))
    bench_env.record(benchmark, flops=cost.flops, bytes_moved=cost.bytes, dtype="float32", memory=mem,
                     provider=provider, L=L, config="esmfold_v1_8M, 1 block, 1 pass")
