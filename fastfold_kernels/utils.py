"""What the op modules share: the (optional) Triton import, where the kernels can run, the ``tl.dot`` and
rounding helpers, constants, and :class:`AOTConfig`.

The op modules take ``triton`` and ``tl`` from here and nothing private from one another.

Triton is optional: it has wheels for Linux only. Without it, ``triton``/``tl`` below are stand-ins that
let the op modules define their kernels at import time, so their ``_reference`` and ``_torch``
implementations (the ``reference`` and ``torch`` backends) work; launching a Triton kernel, or
:func:`check_triton_device`, raises :class:`TritonUnavailableError` with :data:`TRITON_MISSING`.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = [
    "HAVE_TRITON",
    "TRITON_MISSING",
    "TritonUnavailableError",
    "require_triton",
    "triton",
    "tl",
    "interpreting",
    "check_triton_device",
    "cuda_arch",
    "AOTConfig",
    "aot_config",
    "TRITON_DTYPES",
    "FP32_DOT_PRECISIONS",
    "dot_precision",
    "aot_precisions",
    "launch_arch",
    "emulate_arch",
    "launch_with_fallback",
    "dot_upcast",
    "dot_block",
    "attention_launch",
    "attention_operands",
    "LOG2E",
    "dot",
    "cast_rne",
    "records_grad",
    "recompute_backward",
]

TRITON_MISSING = (
    "the Triton kernels need the triton package, which is not installed: pip install 'triton>=3.6' "
    "(wheels exist for Linux only); use backend='torch'"
)


class TritonUnavailableError(RuntimeError):
    """A Triton kernel was asked for, but the triton package is not installed."""

    def __init__(self, message: str = TRITON_MISSING) -> None:
        super().__init__(message)


# --------------------------------------------------------------------------------------------
# The Triton import, or stand-ins
# --------------------------------------------------------------------------------------------


class _MissingKernel:
    """What ``@triton.jit`` makes without triton: it imports, but launching it raises."""

    def __init__(self, fn: Any) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn

    def __getitem__(self, grid: Any):
        require_triton()

    def __call__(self, *args: Any, **kwargs: Any):
        require_triton()

    def run(self, *args: Any, **kwargs: Any):
        require_triton()


def _missing_jit(fn: Any = None, **kwargs: Any) -> Any:
    """``@triton.jit`` and ``@triton.jit(...)``."""
    return _MissingKernel if fn is None else _MissingKernel(fn)


def _missing_decorator_factory(*args: Any, **kwargs: Any):
    """``@triton.autotune(...)``, ``@triton.heuristics(...)``: the kernel is kept as it is."""
    return lambda kernel: kernel


class _MissingConfig:
    """``triton.Config``: holds its arguments."""

    def __init__(self, kwargs: dict | None = None, num_warps: int = 4, num_stages: int = 3, **options: Any):
        self.kwargs, self.num_warps, self.num_stages, self.options = dict(kwargs or {}), num_warps, num_stages, options


class _MissingConstexpr:
    """``tl.constexpr``: a value the kernels read at compile time."""

    def __init__(self, value: Any) -> None:
        self.value = value.value if isinstance(value, _MissingConstexpr) else value

    def __repr__(self) -> str:
        return f"constexpr[{self.value!r}]"


class _MissingModule:
    """``triton`` / ``triton.language`` without triton: the names module-level definitions use, and for
    any other name :class:`TritonUnavailableError`."""

    def __init__(self, name: str, **names: Any) -> None:
        self.__name__ = name
        self.__dict__.update(names)

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise TritonUnavailableError()

    def __repr__(self) -> str:
        return f"<stand-in for {self.__name__}: triton is not installed>"


try:
    import triton
    import triton.language as tl
except ImportError as _err:
    HAVE_TRITON = False
    # Shown as the cause only when triton is there but fails to import; "not installed" needs no traceback.
    _IMPORT_FAILURE: ImportError | None = (
        None if isinstance(_err, ModuleNotFoundError) and _err.name == "triton" else _err
    )
    triton = _MissingModule(
        "triton",
        jit=_missing_jit,
        autotune=_missing_decorator_factory,
        heuristics=_missing_decorator_factory,
        Config=_MissingConfig,
        cdiv=lambda x, y: (x + y - 1) // y,
        next_power_of_2=lambda n: 0 if n <= 0 else 1 << (int(n) - 1).bit_length(),
    )
    tl = _MissingModule("triton.language", constexpr=_MissingConstexpr)
else:
    HAVE_TRITON = True
    _IMPORT_FAILURE = None


def require_triton() -> None:
    """Raise :class:`TritonUnavailableError` (one line: :data:`TRITON_MISSING`) when triton is missing."""
    if not HAVE_TRITON:
        raise TritonUnavailableError() from _IMPORT_FAILURE


# --------------------------------------------------------------------------------------------
# Where the kernels can run, decided once at import time
# --------------------------------------------------------------------------------------------


@triton.jit
def _probe():
    pass


# triton.jit reads TRITON_INTERPRET when a kernel is decorated, so what it built at import is what runs.
_INTERPRET_AT_IMPORT = HAVE_TRITON and not isinstance(_probe, triton.runtime.JITFunction)


def interpreting() -> bool:
    """True when the kernels were built for Triton's CPU interpreter (``TRITON_INTERPRET=1`` at import)."""
    return _INTERPRET_AT_IMPORT


def check_triton_device(device: torch.device | str) -> None:
    """Raise a clear ``RuntimeError`` when the Triton kernels cannot run on ``device``."""
    require_triton()
    device = torch.device(device)
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


_EMULATED_ARCH: int | None = None


def launch_arch(device: torch.device | str) -> int | None:
    """The architecture whose tiles a launch on ``device`` uses: :func:`cuda_arch` on CUDA. Under the
    interpreter None (each op's small test tiles), or the arch :func:`emulate_arch` set, so tests run
    the CUDA launcher's real tile configurations on the CPU."""
    if interpreting():
        return _EMULATED_ARCH
    return cuda_arch(device)


@contextlib.contextmanager
def emulate_arch(arch: int | None):
    """Within the block, launches under the interpreter use the tiles the CUDA launcher picks on
    ``sm_<arch>`` (warps and stages are ignored by the interpreter)."""
    global _EMULATED_ARCH
    previous, _EMULATED_ARCH = _EMULATED_ARCH, arch
    try:
        yield
    finally:
        _EMULATED_ARCH = previous


# Launch configurations that failed with OutOfResources, to the fallback that worked: a later launch
# goes straight to the fallback instead of compiling the failing config again.
_FALLBACKS: dict[tuple, Any] = {}


def _config_key(op: str, config: Any) -> tuple:
    """A hashable key of a launch configuration: a dict, a NamedTuple or a dataclass."""
    if isinstance(config, dict):
        items = config.items()
    elif hasattr(config, "_asdict"):
        items = config._asdict().items()
    else:
        items = vars(config).items()
    return (op, *sorted(items))


def launch_with_fallback(op: str, config: Any, smaller: Any, launch: Callable[[Any], Any]) -> Any:
    """``launch(config)``; when Triton raises OutOfResources for it (more shared memory or registers
    than this GPU has), retry once with ``smaller`` (the next smaller configuration) and remember the
    choice. A second failure raises ``RuntimeError`` naming ``op`` and both configurations."""
    key = _config_key(op, config)
    if key in _FALLBACKS:
        return launch(_FALLBACKS[key])
    try:
        return launch(config)
    except triton.runtime.errors.OutOfResources as first:
        if smaller is None or smaller == config:
            raise RuntimeError(f"{op}: out of GPU resources at its smallest configuration {config}: {first}") from first
        warnings.warn(f"{op}: {first}; retrying with the smaller configuration {smaller}", RuntimeWarning, stacklevel=2)
        try:
            result = launch(smaller)
        except triton.runtime.errors.OutOfResources as second:
            raise RuntimeError(
                f"{op}: out of GPU resources with configuration {config} and with the smaller {smaller}: {second}"
            ) from second
        _FALLBACKS[key] = smaller
        return result


# --------------------------------------------------------------------------------------------
# Ahead-of-time compilation
# --------------------------------------------------------------------------------------------


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


def aot_config(name: str, fn: Any, signature: dict[str, str], launch: dict[str, Any], uses_dot: bool = False) -> AOTConfig:
    """The :class:`AOTConfig` of a launch from the keyword arguments the launcher passes the kernel:
    ``num_warps``/``num_stages`` are launch options, every other entry a constexpr."""
    constexprs = {k: v for k, v in launch.items() if k not in ("num_warps", "num_stages")}
    return AOTConfig(name, fn, signature, constexprs, launch["num_warps"], launch["num_stages"], uses_dot)


# Triton's type names of the activation dtypes the kernels take (pointer types are "*" + name).
TRITON_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


# --------------------------------------------------------------------------------------------
# tl.dot and rounding
# --------------------------------------------------------------------------------------------

# ``tl.dot`` input_precision of fp32 operands for each ``torch.get_float32_matmul_precision()``: one
# precision policy for torch's matmuls and the kernels' dots. "highest" (torch's default): full fp32 on
# FMA units, parity with the fp32/fp64 references. "high": 3xTF32 on tensor cores (hi/lo operand
# splits, near-fp32; torch itself may use plain TF32 here). "medium": TF32, ~1e-3 relative.
FP32_DOT_PRECISIONS = {"highest": "ieee", "high": "tf32x3", "medium": "tf32"}


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of the dots of a kernel launched now for ``dtype``: for fp32 operands the
    entry of :data:`FP32_DOT_PRECISIONS` for ``torch.get_float32_matmul_precision()`` (read at every
    launch), else "tf32" (which fp16/bf16 operands ignore: they always run on tensor cores)."""
    if dtype == torch.float32:
        return FP32_DOT_PRECISIONS[torch.get_float32_matmul_precision()]
    return "tf32"


def aot_precisions(dtype: torch.dtype) -> tuple[str, ...]:
    """The ``input_precision`` values a kernel in ``dtype`` can be launched with (ahead-of-time configs
    list one config per value): all three for fp32, the one for half dtypes."""
    if dtype == torch.float32:
        return tuple(FP32_DOT_PRECISIONS.values())
    return ("tf32",)


def dot_upcast(dtype: torch.dtype) -> bool:
    """The ``UPCAST`` flag of :func:`dot` for a launch in ``dtype``: bf16 under the interpreter."""
    return interpreting() and dtype == torch.bfloat16


def dot_block(n: int) -> int:
    """Padded power-of-two tile width of a ``tl.dot`` dimension of size ``n`` (tl.dot needs >= 16)."""
    return max(16, triton.next_power_of_2(n))


def attention_launch(
    tiles: dict[str, int], has_mask: bool, dtype: torch.dtype, aot_precision: str | None = None
) -> dict[str, Any]:
    """Keyword arguments of a launch of either attention kernel (rotary, triangle) in ``dtype``: its
    tiles (``BLOCK_*``, ``num_warps``, ``num_stages``), ``HAS_MASK``, ``DOT_PRECISION`` and ``UPCAST_DOT``.
    ``aot_precision``: as the ahead-of-time configs compile it (that dot precision, never upcast).
    Tiles may pin ``DOT_PRECISION`` ("ieee": a config with no spill-free tensor-core form computes in
    full fp32, more precisely than the policy asks)."""
    aot = aot_precision is not None
    tiles = dict(tiles)
    pinned = tiles.pop("DOT_PRECISION", None)
    return dict(
        HAS_MASK=has_mask,
        **tiles,
        DOT_PRECISION=pinned or (aot_precision if aot else dot_precision(dtype)),
        UPCAST_DOT=False if aot else dot_upcast(dtype),
    )


def attention_operands(op: str, layout: str, q, k, v, scale: float | None, out):
    """What both attention kernels check and prepare: q, k, v of one dtype (fp16/bf16/fp32) with head
    dim D <= 128 and unit stride on D (copied otherwise), the scale (default D**-0.5) and the output
    buffer of q's shape (``layout``) and dtype (fresh when ``out`` is None). Returns (q, k, v, scale, out)."""
    D = q.shape[-1]
    if D > 128:
        raise ValueError(f"{op} kernel supports D <= 128; got {D}")
    if q.dtype not in TRITON_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share one of fp16/bf16/fp32; got {q.dtype}, {k.dtype}, {v.dtype}")
    scale = D**-0.5 if scale is None else float(scale)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    elif out.shape != q.shape or out.dtype != q.dtype or out.stride(-1) != 1:
        raise ValueError(f"out must be a {layout} buffer of q's dtype with unit stride on D")
    return q, k, v, scale, out


# log2(e): the kernels' softmaxes run in exp2, with logits in log2 units. A tl.constexpr so kernels read
# it as a compile-time constant; host code takes ``LOG2E.value``.
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def dot(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``a @ b`` with fp32 accumulation, added to ``acc`` (or to zeros when ``acc`` is None).

    ``PRECISION`` is ``tl.dot``'s ``input_precision`` for fp32 operands (see :func:`dot_precision`).
    ``UPCAST`` is set only under Triton's CPU interpreter for bf16, whose ``tl.dot`` misreads bf16
    operands (triton 3.9); bf16 x bf16 products are exact in fp32, so upcasting the (already
    bf16-rounded) operands computes what a tensor-core mma computes.
    """
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=PRECISION)


# Triton's interpreter truncates fp32 -> bf16 where the GPU rounds to nearest even; emulate it there.
_EMULATE_BF16_RNE = tl.constexpr(interpreting())


@triton.jit
def cast_rne(x, DTYPE: tl.constexpr):
    """``x.to(DTYPE)`` rounding to nearest even, as GPUs and PyTorch do, under the interpreter too."""
    if _EMULATE_BF16_RNE and DTYPE == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)  # round half to even on the 16 dropped bits
        y = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        y = x.to(DTYPE)
    return y


# --------------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------------


def records_grad(*tensors) -> bool:
    """Whether autograd records an op on ``tensors`` (grad enabled and one of them requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _RecomputeBackward(torch.autograd.Function):
    """Forward: a forward-only kernel. Backward: the same function rebuilt with autograd by a
    differentiable PyTorch implementation from the saved inputs, and its vector-Jacobian product.
    Under ``create_graph=True`` the recomputation stays attached to the inputs, so a double backward
    differentiates it too."""

    @staticmethod
    def forward(ctx, kernel, math, *tensors):
        ctx.math = math
        ctx.save_for_backward(*tensors)
        return kernel(*tensors)

    @staticmethod
    def backward(ctx, grad_out):
        needs = ctx.needs_input_grad[2:]
        create_graph = torch.is_grad_enabled()  # backward(create_graph=True)
        inputs = ctx.saved_tensors
        if not create_graph:
            inputs = [t.detach().requires_grad_(n) for t, n in zip(inputs, needs)]
        with torch.enable_grad():
            out = ctx.math(*inputs)
        wanted = [t for t, n in zip(inputs, needs) if n]
        grads = iter(torch.autograd.grad(out, wanted, grad_out, allow_unused=True, create_graph=create_graph))
        return (None, None, *(next(grads) if n else None for n in needs))


def recompute_backward(kernel, math, *tensors):
    """``kernel(*tensors)``, differentiable: when autograd records, backward recomputes
    ``math(*tensors)`` (same function, differentiable PyTorch) and returns its gradients."""
    if not records_grad(*tensors):
        return kernel(*tensors)
    return _RecomputeBackward.apply(kernel, math, *tensors)
