"""End to end, in process: ours (default backend) and our reference backend vs transformers'
``EsmForProteinFolding``, the same random weights (one saved checkpoint), 8M LM + one full-width
trunk block + the default structure module, one trunk pass, fp32."""

import pytest
import torch

from esmfold_fast.bench_flops import esmfold_costs, total
from esmfold_fast.bench_measure import build_fold, fold_spec, prepare_esmfold_checkpoint
from esmfold_fast.config import named_config

PROVIDERS = ("ours", "reference", "transformers")
CASES = {"L64": 64, "L128": 128, "L256": 256}
CUDA_CASES = {"L512": 512, "L1024": 1024}
QUICK_CASES = {"L32": 32}
CONFIG = dict(name="esmfold_v1_8M", num_blocks=1)


@pytest.fixture(scope="module")
def checkpoint():
    return prepare_esmfold_checkpoint(named_config(CONFIG["name"], num_blocks=CONFIG["num_blocks"]))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_esmfold_one_pass(benchmark, bench_env, checkpoint, provider, case):
    L = case
    if provider == "reference" and L > 256:
        pytest.skip("CUDA size: the reference backend materialises full triangle-attention logits")
    spec = fold_spec(provider, checkpoint, L, device=bench_env.device)
    fold = build_fold(spec)

    def run():
        with torch.inference_mode():
            out = fold()
        bench_env.sync()
        return out

    with bench_env.Memory() as mem:
        run()
    benchmark.pedantic(run, rounds=5 if bench_env.device == "cuda" else 2, warmup_rounds=0)
    cost = total(esmfold_costs(L, named_config(CONFIG["name"], num_blocks=CONFIG["num_blocks"]), 1))
    bench_env.record(benchmark, flops=cost.flops, bytes_moved=cost.bytes, dtype="float32", memory=mem,
                     provider=provider, L=L, config="esmfold_v1_8M, 1 block, 1 pass")
