"""The analytic peak memory (profiling/launch_plan.py): what the meta-device run counts is what a real run
allocates, and the counter itself is right."""

from __future__ import annotations

import pytest
import torch

from esmfold_fast import ESMFold
from esmfold_fast.benchmarking.launches import planned_backend, set_ops
from esmfold_fast.benchmarking.memory_model import LiveBytes, activation_peak, fold_peak
from esmfold_fast.config import named_config


def test_live_bytes_follows_storages_not_views():
    a = torch.empty(1000)
    with LiveBytes() as live:
        b = a * 2  # 4000 B
        c = b.view(10, 100)[0]  # a view: no new storage
        del b
        d = torch.empty(500, dtype=torch.float64)  # 4000 B while b's storage lives on through c
        del c, d
        e = torch.empty(10)
    assert live.peak == 8000
    assert live.current == 40
    del e


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("lean", [True, False])
def test_meta_run_allocates_what_a_real_run_allocates(backend, lean):
    """The same forward on real CPU tensors and on meta tensors allocates the same bytes, so the meta
    figures at L=2700 are what the code allocates (Triton launches are skipped in both)."""
    L = 37
    config = named_config("tiny")
    real = ESMFold.from_config(config, backend="torch")
    with torch.device("meta"):
        meta = ESMFold(config)
    for model in (real, meta):
        set_ops(model, planned_backend(backend, free_bytes=2**30))
    meta.trunk._padding_mask = lambda mask: None  # the real one finds no padding by looking
    peak, outputs = activation_peak(real, L, lean)
    assert (peak, outputs) == activation_peak(meta, L, lean)
    assert peak > outputs > 0


def test_fold_peak_scales_with_the_pair_state():
    small, big = (fold_peak(L, "tiny", backend="torch", free_bytes=None) for L in (64, 128))
    assert small["weights"] == big["weights"] > 0
    assert big["activations"] > 3 * small["activations"]  # quadratic in L (plus linear terms)
    lean, full = (fold_peak(300, "tiny", backend="triton", lean_outputs=lean) for lean in (True, False))
    pair_outputs = 300 * 300 * (3 * 64 + named_config("tiny").trunk.pairwise_state_dim) * 4 / 2**30
    # s_z, the distogram, pTM logits and PAE probabilities, to within a few small tensors
    assert full["outputs"] - lean["outputs"] == pytest.approx(pair_outputs, rel=1e-3)
