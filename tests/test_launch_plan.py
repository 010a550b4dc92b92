"""The launch plan (issue 8, item 2): on the fused path a trunk block's launches do not grow with L while its
working set fits the free memory; the torch path keeps its lean chunking. Counted on the meta device with the
kernels' launches replaced by counters (esmfold_fast.benchmarking.launches), so real lengths cost nothing."""

from __future__ import annotations

import pytest
import torch

from esmfold_fast import memory
from esmfold_fast.backend import get_backend
from esmfold_fast.benchmarking.launches import count_block_launches
from esmfold_fast.memory import FUSED_MEMORY_FRACTION, TRUNK_CHUNK_ELEMENTS, ChunkPlan

PAIR_OPS = ("layer_norm", "triangle_attention", "triangle_multiplicative_update")
GIB = 2**30


def test_fused_block_launches_do_not_grow_with_length():
    short, long = (count_block_launches(L, backend="triton", free_bytes=80 * GIB) for L in (512, 1024))
    assert short == long
    assert short["kernels"] > 0 and all(short[op] > 0 for op in PAIR_OPS)
    assert short["kernels"] < 100  # one launch per kernel of each op, not one per row chunk


def test_torch_path_keeps_its_lean_chunks():
    """The torch backend materialises attention scores (2 x 4 heads x L^2 per row counted): its chunks stay
    within the CPU element budget, 16 rows at L=256 and 4 at L=512, for each of the two triangle attentions
    (the sequence attention is one more call)."""
    short, long = (count_block_launches(L, backend="torch") for L in (256, 512))
    assert short["triangle_attention"] == 2 * 256 // 16 + 1
    assert long["triangle_attention"] == 2 * 512 // 4 + 1


def test_fused_plan_chunks_when_the_working_set_does_not_fit():
    roomy = count_block_launches(1024, backend="triton", free_bytes=80 * GIB)
    tight = count_block_launches(1024, backend="triton", free_bytes=2 * GIB)
    assert tight["triangle_attention"] > roomy["triangle_attention"]
    # a user's chunk_size is a cap on every path
    capped = count_block_launches(1024, backend="triton", free_bytes=80 * GIB, chunk_size=256)
    assert capped["triangle_attention"] == 1 + 2 * 4


def test_plans_per_backend():
    like = torch.empty(0, dtype=torch.bfloat16)
    lean = get_backend("torch").chunk_plan(like, chunk_size=7)
    assert lean == ChunkPlan(TRUNK_CHUNK_ELEMENTS, 7, scores_materialised=True)
    fused = get_backend("triton").chunk_plan(like, None, free_bytes=64 * GIB)
    assert fused == ChunkPlan(int(64 * GIB * FUSED_MEMORY_FRACTION) // 2, None, scores_materialised=False)
    # rows: the user's cap, the budget, at least one row
    assert lean.rows(100, 10) == 7
    assert ChunkPlan(1000).rows(100, 300) == 3
    assert ChunkPlan(1000).rows(100, 10, score_elements_per_row=500) == 2
    assert ChunkPlan(1000, scores_materialised=False).rows(100, 10, score_elements_per_row=500) == 100
    assert ChunkPlan(10).rows(100, 10**6) == 1


def test_fused_plan_reads_free_memory_now(monkeypatch):
    """On CUDA the budget is the driver's free memory plus what torch's allocator caches unused; on the
    CPU (the interpreter) the kernel's MemAvailable."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * GIB, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 6 * GIB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2 * GIB)
    assert memory.free_memory_bytes(torch.device("cuda", 0)) == 14 * GIB

    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    assert memory.free_memory_bytes(torch.device("cpu")) == pytest.approx(available, rel=0.2)
    plan = get_backend("triton").chunk_plan(torch.empty(0))
    assert plan.budget == pytest.approx(available * FUSED_MEMORY_FRACTION / 4, rel=0.2)
