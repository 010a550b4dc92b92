"""Backend op calls and Triton kernel launches of one trunk block, counted without computing anything.

The block is built and run on the meta device (shapes only: no memory, no arithmetic) with every Triton
kernel's launch replaced by a counter, so what is counted is what the launch plan decides, at any L, on
any machine. ``free_bytes`` stands in for the device's free memory (``torch.cuda.mem_get_info``), so the
plan of an 80 GB GPU can be counted on a laptop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
from typing import Iterator

import torch

from ..backend import BACKENDS, Backend, _build
from ..config import TrunkConfig
from ..trunk import TriangularSelfAttentionBlock

OPS = ("layer_norm", "rotary_attention", "triangle_attention", "triangle_multiplicative_update")


@contextlib.contextmanager
def counted_kernels(counts: dict[str, int]) -> Iterator[None]:
    """Within the block, launching any op's Triton kernel adds one to ``counts["kernels"]`` and runs nothing."""
    kernels = set()
    for op in OPS:
        module = importlib.import_module(f"fastfold_kernels.{op}")
        kernels |= {cfg.fn for cfg in module.aot_configs()}
    saved = [(kernel, kernel.run) for kernel in kernels]

    def skipped(*args, **kwargs):
        counts["kernels"] += 1

    try:
        for kernel, _ in saved:
            kernel.run = skipped
        yield
    finally:
        for kernel, run in saved:
            kernel.run = run


@dataclasses.dataclass(frozen=True)
class PlannedBackend(Backend):
    """A backend whose fused launch plan sees ``free_bytes`` free (None: the memory free now)."""

    free_bytes: int | None = None

    def chunk_plan(self, like, chunk_size=None, free_bytes=None):
        return super().chunk_plan(like, chunk_size, self.free_bytes if free_bytes is None else free_bytes)


def planned_backend(name: str, free_bytes: int | None, counts: dict[str, int] | None = None) -> PlannedBackend:
    """Backend ``name`` planning with ``free_bytes``; with ``counts``, every op call is counted under its name
    (op attributes such as ``supports_add_into_z`` kept, so the model takes the same path). Nothing is
    launched through it where the kernels are counted, so it skips the device check."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    backend = _build(name)
    ops = {op: getattr(backend, op) for op in OPS}
    if counts is not None:
        ops = {op: _counted(fn, op, counts) for op, fn in ops.items()}
    return PlannedBackend(name=name, **ops, free_bytes=free_bytes)


def _counted(fn, op: str, counts: dict[str, int]):
    @functools.wraps(fn)
    def counted(*args, **kwargs):
        counts[op] += 1
        return fn(*args, **kwargs)

    return counted


def set_ops(model: torch.nn.Module, ops: Backend) -> None:
    """Hand ``ops`` to every backend module of ``model`` (``set_backend`` without its device check)."""
    for module in model.modules():
        if hasattr(module, "ops"):
            module.ops = ops


def count_block_launches(
    L: int,
    trunk: TrunkConfig | None = None,
    backend: str = "triton",
    dtype: torch.dtype = torch.float32,
    free_bytes: int | None = 80 * 2**30,
    chunk_size: int | None = None,
) -> dict[str, int]:
    """Op calls (per op) and Triton kernel launches (``"kernels"``) of one trunk block at length ``L``
    under ``torch.no_grad()``, with ``free_bytes`` free on the device for the fused path's plan."""
    trunk = trunk or TrunkConfig()
    counts = dict.fromkeys((*OPS, "kernels"), 0)
    with torch.device("meta"):
        block = TriangularSelfAttentionBlock(trunk).to(dtype).eval()
        s = torch.empty(1, L, trunk.sequence_state_dim, dtype=dtype)
        z = torch.empty(1, L, L, trunk.pairwise_state_dim, dtype=dtype)
    ops = planned_backend(backend, free_bytes, counts)
    set_ops(block, ops)
    plan = ops.chunk_plan(z, chunk_size)
    with torch.no_grad(), (counted_kernels(counts) if backend == "triton" else contextlib.nullcontext()):
        block(s, z, plan=plan)
    return counts
