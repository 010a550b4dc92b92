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

BACKENDS = ("reference", "torch", "triton")


@dataclass(frozen=True)
class Backend:
    """The hot-path ops of one backend; signatures are those of :mod:`fastfold_kernels`."""

    name: str
    layer_norm: Callable
    rotary_attention: Callable
    triangle_attention: Callable
    triangle_multiplicative_update: Callable

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
