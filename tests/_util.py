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
