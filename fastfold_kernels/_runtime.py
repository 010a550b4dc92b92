"""Where the Triton kernels can run, decided once at import time."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

# triton.jit reads TRITON_INTERPRET when a kernel is decorated, so what holds at import is what runs.
_INTERPRET_AT_IMPORT = os.environ.get("TRITON_INTERPRET", "0") == "1"


def interpreting() -> bool:
    """True when the kernels were built for Triton's CPU interpreter."""
    return _INTERPRET_AT_IMPORT


def check_triton_device(device: torch.device | str) -> None:
    """Raise a clear ``RuntimeError`` when the Triton kernels cannot run on ``device``."""
    device = torch.device(device)
    try:
        import triton  # noqa: F401
    except ImportError as err:  # pragma: no cover - triton is a hard dependency
        raise RuntimeError(f"backend='triton' needs the triton package: {err}") from err
    if device.type == "cuda":
        if _INTERPRET_AT_IMPORT:
            raise RuntimeError(
                "backend='triton' on CUDA: TRITON_INTERPRET=1 was set when fastfold_kernels was "
                "imported, so the kernels were built for the CPU interpreter; unset it"
            )
        if not torch.cuda.is_available():
            raise RuntimeError("backend='triton' on CUDA, but torch sees no CUDA device")
        return
    if device.type == "cpu":
        if not _INTERPRET_AT_IMPORT:
            raise RuntimeError(
                "backend='triton' on CPU runs only through Triton's interpreter: set TRITON_INTERPRET=1 "
                "before importing esmfold_fast/fastfold_kernels, or use backend='torch'"
            )
        return
    raise RuntimeError(f"backend='triton' cannot run on device {device}")


def cuda_arch(device: torch.device | str | None = None) -> int:
    """``major * 10 + minor`` of a CUDA device (90 for H100, 80 for A100): launchers pick tiles by it."""
    device = torch.device("cuda") if device is None else torch.device(device)
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


@dataclass(frozen=True)
class AOTConfig:
    """One kernel launch configuration, as the model launches it, for ahead-of-time compilation.

    ``signature`` maps every non-constexpr argument name to a Triton type string (``"*fp32"``,
    ``"i32"``, ``"fp32"``); ``constexprs`` gives the constexpr arguments' values. ``uses_dot`` marks
    kernels that multiply matrices (``tl.dot``), which must reach tensor cores on sm_90.
    Tiles can differ by architecture: an op module's ``aot_configs(arch)`` lists what its launcher
    launches on ``sm_<arch>`` (see :func:`cuda_arch`).
    """

    name: str
    fn: Any
    signature: dict[str, str]
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3
    uses_dot: bool = False
