"""LayerNorm over the last dimension, optionally fused with a residual add (Apex/Liger style).

``layer_norm(x, weight, bias, eps=1e-5, residual=None)``
    x: [..., C]; weight, bias: [C] (bias may be None). Statistics in fp32 (fp64 for fp64 input).
    Returns y = LayerNorm(x) in x's dtype, or, with ``residual`` ([..., C], same shape as x),
    the pair ``(LayerNorm(x + residual), x + residual)`` where the sum is rounded to x's dtype first,
    exactly as ``x + residual`` would be in PyTorch.

Three implementations share that signature: :func:`layer_norm` (Triton), :func:`layer_norm_reference`
(naive PyTorch, the oracle) and :func:`layer_norm_torch` (``torch.nn.functional.layer_norm``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .utils import TRITON_DTYPES, AOTConfig, cast_rne, require_triton, tl, triton

# Elements one program normalises at once; rows are packed into the tile when C is narrow (the pair
# tensor's C=128 rows would leave most lanes idle one row per program).
_TILE_ELEMS = 4096


@triton.jit
def _layer_norm_fwd_kernel(
    X,  # *dtype, rows addressed as outer * stride_xo + inner * stride_xi
    R,  # *dtype, residual, same addressing with its own strides (unused unless HAS_RES)
    W,  # *wdtype [C]
    Bias,  # *wdtype [C] (unused unless HAS_BIAS)
    Y,  # *dtype [n_rows, C] contiguous
    S,  # *dtype [n_rows, C] contiguous: x + residual (unused unless HAS_RES)
    n_rows,
    n_inner,
    stride_xo,
    stride_xi,
    stride_ro,
    stride_ri,
    C,
    eps,
    HAS_RES: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R], int64: rows * C can pass 2^31
    cols = tl.arange(0, BLOCK_C)  # [BLOCK_C]
    row_ok = rows < n_rows
    col_ok = cols < C
    tile_ok = row_ok[:, None] & col_ok[None, :]  # [BLOCK_R, BLOCK_C]
    outer = rows // n_inner
    inner = rows % n_inner

    x_ptrs = X + (outer * stride_xo + inner * stride_xi)[:, None] + cols[None, :]
    x = tl.load(x_ptrs, mask=tile_ok, other=0.0).to(tl.float32)  # [BLOCK_R, BLOCK_C]
    y_offs = rows[:, None] * C + cols[None, :]  # [BLOCK_R, BLOCK_C]
    if HAS_RES:
        r_ptrs = R + (outer * stride_ro + inner * stride_ri)[:, None] + cols[None, :]
        r = tl.load(r_ptrs, mask=tile_ok, other=0.0).to(tl.float32)
        # Round the sum to the storage dtype before normalising, as `LayerNorm(x + residual)` does.
        s = cast_rne(x + r, S.dtype.element_ty)
        tl.store(S + y_offs, s, mask=tile_ok)
        x = s.to(tl.float32)

    mean = tl.sum(x, axis=1) / C  # [BLOCK_R]
    diff = tl.where(tile_ok, x - mean[:, None], 0.0)  # [BLOCK_R, BLOCK_C]
    var = tl.sum(diff * diff, axis=1) / C  # [BLOCK_R], two-pass: no E[x^2] - mean^2 cancellation
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)  # [BLOCK_C]
    y = diff * rstd[:, None] * w[None, :]
    if HAS_BIAS:
        b = tl.load(Bias + cols, mask=col_ok, other=0.0).to(tl.float32)
        y = y + b[None, :]
    tl.store(Y + y_offs, cast_rne(y, Y.dtype.element_ty), mask=tile_ok)


def _block_shape(C: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_C, num_warps) for rows of width C."""
    block_c = triton.next_power_of_2(C)
    block_r = max(1, _TILE_ELEMS // block_c)
    num_warps = min(16, max(4, (block_r * block_c) // 1024))
    return block_r, block_c, num_warps


def _collapse_leading(t: torch.Tensor) -> list[tuple[int, int]] | None:
    """(size, stride) of ``t``'s leading dims with mergeable neighbours merged; None if last dim strided."""
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        return None
    dims = [(n, s) for n, s in zip(t.shape[:-1], t.stride()[:-1]) if n != 1]
    merged: list[tuple[int, int]] = []
    for n, s in dims:
        if merged and merged[-1][1] == n * s:
            merged[-1] = (merged[-1][0] * n, s)
        else:
            merged.append((n, s))
    return merged


def _row_addressing(t: torch.Tensor, n_inner: int | None) -> tuple[torch.Tensor, int, int, int] | None:
    """Strides so that row ``r`` of ``t`` starts at ``(r // n_inner) * so + (r % n_inner) * si``.

    With ``n_inner=None`` the split is chosen from ``t`` itself. Returns ``(t, n_inner, so, si)``, or None
    when ``t``'s rows cannot be addressed that way without a copy.
    """
    dims = _collapse_leading(t)
    if dims is None or len(dims) > 2:
        return None
    if len(dims) == 0:
        return t, 1, 0, 0
    if len(dims) == 1:
        (n, s) = dims[0]
        inner = n if n_inner is None else n_inner
        if n % inner:
            return None
        return t, inner, inner * s, s
    (n0, s0), (n1, s1) = dims
    if n_inner is not None and n_inner != n1:
        return None
    return t, n1, s0, s1


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
    residual: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Triton LayerNorm over the last dim of x [..., C]; with ``residual`` also returns x + residual.

    Rows may be strided views (the last dim must be contiguous, otherwise x is copied once). Outputs
    are new contiguous tensors of x's shape and dtype. fp16, bf16 and fp32 inputs; statistics in fp32.
    """
    require_triton()
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"layer_norm (triton) supports fp16/bf16/fp32, got {x.dtype}; use the torch backend")
    C = x.shape[-1]
    if weight.shape != (C,) or (bias is not None and bias.shape != (C,)):
        raise ValueError(f"weight/bias must have shape ({C},), got {tuple(weight.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
    n_rows = x.numel() // C if C else 0

    addr_x = _row_addressing(x, None)
    if addr_x is None:
        addr_x = _row_addressing(x.contiguous(), None)
    x, n_inner, sxo, sxi = addr_x
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if residual is not None:
        residual = residual.to(x.dtype)
        addr_r = _row_addressing(residual, n_inner)
        if addr_r is None:
            addr_r = _row_addressing(residual.contiguous(), n_inner)
        residual, _, sro, sri = addr_r
        s = torch.empty_like(y)
    else:
        residual, s, sro, sri = x, y, 0, 0
    if n_rows == 0:
        return y if residual is x else (y, s)

    block_r, block_c, num_warps = _block_shape(C)
    grid = (triton.cdiv(n_rows, block_r),)
    _layer_norm_fwd_kernel[grid](
        x, residual, weight, bias if bias is not None else weight, y, s,
        n_rows, n_inner, sxo, sxi, sro, sri, C, eps,
        HAS_RES=residual is not x, HAS_BIAS=bias is not None,
        BLOCK_R=block_r, BLOCK_C=block_c, num_warps=num_warps,
    )  # fmt: skip
    return y if residual is x else (y, s)


def layer_norm_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
    residual: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Naive LayerNorm, the oracle: mean and biased variance in fp32 (fp64 for fp64 input)."""
    if residual is not None:
        s = x + residual.to(x.dtype)
        return layer_norm_reference(s, weight, bias, eps), s
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(acc)
    mean = xf.mean(dim=-1, keepdim=True)
    var = ((xf - mean) ** 2).mean(dim=-1, keepdim=True)
    y = (xf - mean) / torch.sqrt(var + eps) * weight.to(acc)
    if bias is not None:
        y = y + bias.to(acc)
    return y.to(x.dtype)


def layer_norm_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
    residual: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``F.layer_norm`` (fp32 statistics for half inputs on CPU and CUDA) plus the residual add."""
    if residual is not None:
        s = x + residual.to(x.dtype)
        return layer_norm_torch(s, weight, bias, eps), s
    if weight.dtype != x.dtype:
        weight = weight.to(x.dtype)
        bias = bias.to(x.dtype) if bias is not None else None
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


# Widths the model normalises with this kernel: ESM-2 embed dims (320..5120), trunk c_s 1024 and c_z
# 128 (the structure module's LayerNorms are nn.LayerNorm). The LM runs in fp16/bf16/fp32, the trunk
# in fp32 or bf16.
_MODEL_WIDTHS = (128, 320, 480, 640, 1024, 1280, 2560, 5120)


def _launch_shapes(widths=_MODEL_WIDTHS) -> dict[tuple[int, int, int], list[int]]:
    """``_block_shape`` -> the widths launched with it. C is a runtime argument, so widths sharing a
    block shape (320/480 -> 512 columns) run one and the same compiled kernel."""
    shapes: dict[tuple[int, int, int], list[int]] = {}
    for C in widths:
        shapes.setdefault(_block_shape(C), []).append(C)
    return shapes


def aot_configs() -> list[AOTConfig]:
    """Every distinct LayerNorm kernel the model launches (bias always present there), named by the
    widths it serves; the same on every architecture."""
    configs = []
    for (block_r, block_c, num_warps), widths in _launch_shapes().items():
        for tdt in TRITON_DTYPES.values():
            for has_res in (False, True):
                ptr = f"*{tdt}"
                signature = {
                    "X": ptr, "R": ptr, "W": ptr, "Bias": ptr, "Y": ptr, "S": ptr,
                    "n_rows": "i32", "n_inner": "i32", "stride_xo": "i32", "stride_xi": "i32",
                    "stride_ro": "i32", "stride_ri": "i32", "C": "i32", "eps": "fp32",
                }  # fmt: skip
                configs.append(
                    AOTConfig(
                        name=f"layer_norm_C{'-'.join(map(str, widths))}_{tdt}{'_res' if has_res else ''}",
                        fn=_layer_norm_fwd_kernel,
                        signature=signature,
                        constexprs={"HAS_RES": has_res, "HAS_BIAS": True, "BLOCK_R": block_r, "BLOCK_C": block_c},
                        num_warps=num_warps,
                        num_stages=1,
                    )
                )
    return configs


__all__ = ["layer_norm", "layer_norm_reference", "layer_norm_torch", "aot_configs"]
