"""The model's memory knobs, documented once.

``chunk_size`` (``ESMFold.set_chunk_size``, ``TrunkConfig.chunk_size``, the CLI's ``--chunk-size``; fair-esm's
name and meaning): the most pair rows one chunk of pair-wide work in the trunk may cover. ``None`` leaves only
the element budget below. Smaller values lower peak memory and cost more Python iterations; they never change
results beyond floating-point reassociation.

Element budgets bound the widest temporary of one chunk, whatever ``L`` is, so peak memory is the pair state
plus a few chunk-sized buffers:

=============================  =================  ==============================================
budget                         elements (fp32)    chunked work
=============================  =================  ==============================================
:data:`TRUNK_CHUNK_ELEMENTS`   2^23 (32 MB)       every pair-wide update of the folding trunk
:data:`STRUCTURE_CHUNK_ELEMENTS` 2^22 (16 MB)     the structure module's in-place pair LayerNorm
:data:`HEAD_CHUNK_ELEMENTS`    2^21 (8 MB)        pair-wide heads (distogram, pTM) and their symmetrisation
=============================  =================  ==============================================

The kernels' own ``chunk_size`` argument means the same (pair rows per block); see :mod:`fastfold_kernels`.

A :class:`ChunkPlan` is decided once per trunk pass by the backend (:meth:`esmfold_fast.backend.Backend.chunk_plan`)
and used by every block of that pass:

- ``torch`` and ``reference`` (the lean CPU path): :data:`TRUNK_CHUNK_ELEMENTS` per chunk, and the attention
  core's ``L x L`` scores per row count, since those paths materialise them.
- ``triton`` (the fused path): the kernels never materialise scores or the triangle product's inputs per row,
  so a chunk may take :data:`FUSED_MEMORY_FRACTION` of the memory free on the device when the pass starts
  (``torch.cuda.mem_get_info`` on CUDA; ``MemAvailable`` on the CPU under the interpreter). While one pass's
  widest per-op working set fits, every op runs in one chunk and a block's launch count does not grow with L.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

TRUNK_CHUNK_ELEMENTS = 1 << 23
STRUCTURE_CHUNK_ELEMENTS = 1 << 22
HEAD_CHUNK_ELEMENTS = 1 << 21


def spans(n: int, step: int) -> Iterator[slice]:
    """``slice``s of at most ``step`` covering ``range(n)``."""
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def rows_per_chunk(
    n_rows: int, elements_per_row: int, chunk_size: int | None = None, budget: int = TRUNK_CHUNK_ELEMENTS
) -> int:
    """Rows per chunk: at most ``chunk_size`` and within ``budget`` elements, at least one."""
    rows = max(1, budget // max(1, elements_per_row))
    if chunk_size is not None:
        rows = min(rows, int(chunk_size))
    return max(1, min(rows, n_rows))


# Share of the free memory one chunk's temporaries may take on the fused path: the widest per-row estimate
# below already counts an op's live temporaries; the rest is headroom for the allocator and the kernels'
# own buffers (e.g. the triangle multiplication's [L, L, c] product).
FUSED_MEMORY_FRACTION = 0.25


@dataclass(frozen=True)
class ChunkPlan:
    """How one trunk pass splits its pair-wide work into row chunks.

    ``budget``: elements the widest temporary of one chunk may have. ``chunk_size``: the user's cap on pair rows
    (None: none). ``scores_materialised``: whether the attention core holds ``H x L`` scores per query row.
    """

    budget: int
    chunk_size: int | None = None
    scores_materialised: bool = True

    def rows(self, n_rows: int, elements_per_row: int, score_elements_per_row: int = 0) -> int:
        """Rows per chunk of an op whose temporaries are ``elements_per_row`` per row, plus
        ``score_elements_per_row`` where the attention scores are materialised."""
        if self.scores_materialised:
            elements_per_row = max(elements_per_row, score_elements_per_row)
        return rows_per_chunk(n_rows, elements_per_row, self.chunk_size, self.budget)


def free_memory_bytes(device: torch.device) -> int:
    """Bytes free for new tensors on ``device``: the CUDA driver's free memory plus what torch's caching
    allocator holds unused, or on the CPU the kernel's ``MemAvailable``."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(0, cached))
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30  # no /proc (not Linux): assume a small machine


def fused_chunk_elements(device: torch.device, dtype: torch.dtype, free_bytes: int | None = None) -> int:
    """The fused path's per-chunk element budget: :data:`FUSED_MEMORY_FRACTION` of ``free_bytes`` (default:
    :func:`free_memory_bytes` now), never below the lean path's."""
    free = free_memory_bytes(device) if free_bytes is None else free_bytes
    itemsize = torch.empty((), dtype=dtype).element_size()
    return max(TRUNK_CHUNK_ELEMENTS, int(free * FUSED_MEMORY_FRACTION) // itemsize)


def release_freed_heap() -> None:
    """Return heap memory that no tensor uses any more to the OS (glibc ``malloc_trim``; elsewhere a no-op).

    Chunk-sized temporaries under glibc's dynamic mmap threshold (up to 32 MB) come from the heap, whose
    freed pages stay resident: between the phases of a fold (language model, trunk, heads) that is 100-200 MB
    of peak RSS at L=640. Trimming costs a few milliseconds.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL(None).malloc_trim
        except (AttributeError, OSError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Callable[[int], int] | bool | None = None
