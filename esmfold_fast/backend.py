"""The one backend switch: which implementation runs the four hot paths.

``reference``  naive PyTorch that mirrors the math (the oracle for every other backend).
``torch``      fast, memory-lean PyTorch (fused SDPA, chunking, in-place updates): the CPU default.
``triton``     the fused kernels of :mod:`fastfold_kernels` (CUDA, or CPU under ``TRITON_INTERPRET=1``).
``auto``       ``triton`` on CUDA, ``torch`` elsewhere.

A backend is chosen once per model (``ESMFold.from_pretrained(..., backend=...)`` or
``model.set_backend(...)``) and handed to every :class:`BackendModule` in it; model code calls
``self.ops.<op>(...)`` and never branches on the backend itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .memory import TRUNK_CHUNK_ELEMENTS, ChunkPlan, fused_chunk_elements

BACKENDS = ("reference", "torch", "triton")


@dataclass(frozen=True)
class Backend:
    """The hot-path ops of one backend; signatures are those of :mod:`fastfold_kernels`."""

    name: str
    layer_norm: Callable
    rotary_attention: Callable
    triangle_attention: Callable
    triangle_multiplicative_update: Callable

    @property
    def fused(self) -> bool:
        """Whether the hot paths are fused kernels that never materialise attention scores."""
        return self.name == "triton"

    def chunk_plan(
        self, like: torch.Tensor, chunk_size: int | None = None, free_bytes: int | None = None
    ) -> ChunkPlan:
        """The row-chunk plan of one trunk pass over pair tensors like ``like`` (device, dtype); see
        :mod:`esmfold_fast.memory`. The fused path sizes chunks from ``free_bytes`` (default: free now)."""
        if self.fused:
            budget = fused_chunk_elements(like.device, like.dtype, free_bytes)
            return ChunkPlan(budget, chunk_size, scores_materialised=False)
        return ChunkPlan(TRUNK_CHUNK_ELEMENTS, chunk_size)

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"


def _build(name: str) -> Backend:
    from fastfold_kernels import layer_norm, rotary_attention, triangle_attention
    from fastfold_kernels import triangle_multiplicative_update as trimul

    suffix = {"reference": "_reference", "torch": "_torch", "triton": ""}[name]
    return Backend(
        name=name,
        layer_norm=getattr(layer_norm, "layer_norm" + suffix),
        rotary_attention=getattr(rotary_attention, "rotary_attention" + suffix),
        triangle_attention=getattr(triangle_attention, "triangle_attention" + suffix),
        triangle_multiplicative_update=getattr(trimul, "triangle_multiplicative_update" + suffix),
    )


_CACHE: dict[str, Backend] = {}


def get_backend(name: str | Backend = "auto", device: torch.device | str | None = None) -> Backend:
    """Validate ``name`` for ``device`` and return its :class:`Backend`.

    Raises ``ValueError`` for an unknown name and ``RuntimeError`` when the backend cannot run on
    ``device`` (e.g. ``triton`` on a CPU without the Triton interpreter).
    """
    if isinstance(name, Backend):
        name = name.name
    device = torch.device(device) if device is not None else torch.device("cpu")
    if name == "auto":
        name = "triton" if device.type == "cuda" else "torch"
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of: auto, {', '.join(BACKENDS)}")
    if name == "triton":
        from fastfold_kernels import check_triton_device

        check_triton_device(device)
    if name not in _CACHE:
        _CACHE[name] = _build(name)
    return _CACHE[name]


class BackendModule(nn.Module):
    """A module whose hot paths run through ``self.ops``; :func:`set_backend` assigns it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Backend = get_backend("torch")


def set_backend(model: nn.Module, name: str | Backend, device: torch.device | str | None = None) -> Backend:
    """Validate the backend once and hand it to every :class:`BackendModule` inside ``model``."""
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    backend = get_backend(name, device)
    for module in model.modules():
        if isinstance(module, BackendModule):
            module.ops = backend
    model.backend = backend  # plain attribute: the model reports what it runs
    return backend


def conversion_target(fn, like: torch.Tensor) -> tuple[torch.device, torch.dtype | None]:
    """Where an ``nn.Module._apply`` conversion (``.to``, ``.cuda``, ``.half``, ``to_empty`` ...) sends the
    floating point tensors of a model whose weights are like ``like``: (device, dtype), dtype None when
    it keeps each tensor's own. Read off two empty probes (float32 and float16), so a move torch cannot
    make (``.cuda()`` without CUDA) raises torch's own error here, before any weight has moved."""
    probes = [fn(torch.empty(0, dtype=dtype, device=like.device)) for dtype in (torch.float32, torch.float16)]
    dtype = probes[0].dtype if probes[0].dtype == probes[1].dtype else None
    if dtype is not None and not dtype.is_floating_point:
        raise TypeError(f"cannot convert the model to {dtype}: its weights are floating point (use a float dtype)")
    return probes[0].device, dtype


def backend_for_move(choice: str, device: torch.device) -> Backend:
    """The backend ``choice`` (``auto`` resolves per device) validated for ``device`` before a model moves
    there; one that cannot run there raises, and the model stays where it was."""
    try:
        return get_backend(choice, device)
    except RuntimeError as err:
        raise RuntimeError(
            f"{err} (the model was not moved to {device}; call set_backend('auto') or set_backend('torch') first)"
        ) from err
