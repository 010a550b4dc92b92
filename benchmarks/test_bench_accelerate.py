"""``esmfold_fast.accelerate(model)`` in process: each class original and accelerated, the same randomly
initialised object (``restore`` between the two sides), fp32. Folding: transformers ``EsmForProteinFolding.infer``
(8M LM, one full-width trunk block c_s 1024 / c_z 128, the default structure module, ``max_recycles`` 4: five
passes). LM classes: ESM-2 35M shape. The issue's table (ratios, every run, peak memory per process) comes from
``profiling/accelerate_report.py``; this file puts the same calls into the pytest-benchmark JSON."""

import pytest
import torch

from esmfold_fast import accelerate, restore
from esmfold_fast.benchmarking import dropin as D
from esmfold_fast.benchmarking.flops import esm2_costs, esmfold_costs, total
from esmfold_fast.config import ESM2Config, named_config

SIDES = ("original", "accelerated")
CASES = {
    "EsmForProteinFolding_L256": D.Case("EsmForProteinFolding", 256, lm="8M"),
    **{f"{c}_L{L}": D.Case(c, L) for c in D.LM_CLASSES for L in (256, 1024)},
}
QUICK_CASES = {
    "EsmForProteinFolding_L32": D.Case("EsmForProteinFolding", 32, lm="8M", max_recycles=1),
    "EsmModel_L128": D.Case("EsmModel", 128, lm="8M"),
    "ESM2_L128": D.Case("ESM2", 128, lm="8M"),
}


def _cost(case: D.Case):
    layers, dim, heads = D.LM_SIZES[case.lm]
    lm = ESM2Config(num_layers=layers, embed_dim=dim, attention_heads=heads)
    if case.cls == "EsmForProteinFolding":
        cfg = named_config("esmfold_v1", esm=lm, num_blocks=1, max_recycles=case.max_recycles)
        return total(esmfold_costs(case.length, cfg, case.max_recycles + 1))
    return total(esm2_costs(case.length, lm, lm_head=case.cls in ("EsmForMaskedLM", "ESM2")))


@pytest.mark.parametrize("side", SIDES)
def test_accelerate_speed(benchmark, bench_env, side, case):
    model = D.build_model(case).to(bench_env.device)
    if side == "accelerated":
        accelerate(model)
    fn = D.make_call(model, case)
    try:
        with D.flushed_denormals(bench_env.device == "cpu"):
            mem = bench_env.measure(benchmark, fn, rounds=5 if bench_env.device == "cuda" else 2,
                                    warmup_rounds=1, inference_mode=True)
    finally:
        restore(model)
    cost = _cost(case)
    bench_env.record(benchmark, flops=cost.flops, bytes_moved=cost.bytes, dtype=torch.float32, memory=mem,
                     side=side, model_class=case.cls, L=case.length, lm=case.lm,
                     passes=case.max_recycles + 1 if case.cls == "EsmForProteinFolding" else None)
