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
"""

from __future__ import annotations

import ctypes
from typing import Callable, Iterator

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
