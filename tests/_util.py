"""Helpers shared by the tests: randomised weights, poisoned outputs, error metrics."""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0, scale: float = 1.0) -> nn.Module:
    """Give EVERY parameter of ``module`` fresh random values, zero-initialised layers included.

    Weights get a fan-in scaled normal (so activations stay O(1) through deep stacks); vectors
    (biases, LayerNorm affine, mixing weights) get O(0.1-1) values around their usual centre.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            fan_in = p.shape[-1]
            val = torch.randn(p.shape, generator=gen, dtype=torch.float64) * (scale / math.sqrt(fan_in))
        elif name.endswith("weight") and ("norm" in name.lower() or "layer_norm" in name):
            val = 1.0 + 0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
        else:
            val = 0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
        p.copy_(val.to(p.dtype))
    return module


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill an output buffer with NaN so a kernel that skips elements is caught."""
    return t.fill_(float("nan"))


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


# Kernel tests run the Triton ops here: CUDA when present, else the CPU through Triton's interpreter.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # NamedTuple of weights
        return type(x)(*(_to(t, device) for t in x))
    if isinstance(x, (tuple, list)):
        return type(x)(_to(t, device) for t in x)
    return x


def on_device(op):
    """``op`` run on :data:`DEVICE`: tensor arguments go there, results come back to the CPU, and an
    ``out=`` buffer is written back, so the same test checks the interpreter on CPU and the real kernel
    on a GPU."""
    if DEVICE.type == "cpu":
        return op

    def run(*args, **kwargs):
        out = kwargs.get("out")
        result = _to(op(*_to(args, DEVICE), **{k: _to(v, DEVICE) for k, v in kwargs.items()}), "cpu")
        if out is not None:
            out.copy_(result)
            return out
        return result

    run.__name__ = getattr(op, "__name__", "op")
    return run


# Python source that hides triton (and triton.*) from every import, as on a machine without its wheels.
HIDE_TRITON = """
import importlib.abc, sys

class _NoTriton(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ImportError(f"No module named {name!r} (hidden by the test)")
        return None

sys.meta_path.insert(0, _NoTriton())
"""


def out_of_resources(monkeypatch, kernel, fails):
    """``kernel`` raises Triton's OutOfResources for the launches whose keyword arguments ``fails``
    picks (each recorded in the returned list) and runs the others; remembered fallbacks are reset."""
    import triton

    from fastfold_kernels import utils as kutils

    raised = []

    def run(*args, _run=kernel.run, **kwargs):
        if fails(kwargs):
            raised.append(dict(kwargs))
            raise triton.runtime.errors.OutOfResources(300000, 232448, "shared memory")
        return _run(*args, **kwargs)

    monkeypatch.setattr(kernel, "run", run)
    monkeypatch.setattr(kutils, "_FALLBACKS", {})
    return raised


class LaunchRecorder:
    """Stands in for a kernel: records each launch's keyword arguments, raises OutOfResources for
    launches whose BLOCK_M * BLOCK_N is above ``limit``, and runs the others."""

    def __init__(self, kernel, limit: int | None = None):
        self.kernel, self.limit, self.launches = kernel, limit, []

    def __getitem__(self, grid):
        import triton

        def launch(*args, **kwargs):
            self.launches.append(kwargs)
            if self.limit is not None and kwargs["BLOCK_M"] * kwargs["BLOCK_N"] > self.limit:
                raise triton.runtime.errors.OutOfResources(2 * self.limit, self.limit, "shared memory")
            return self.kernel[grid](*args, **kwargs)

        return launch
