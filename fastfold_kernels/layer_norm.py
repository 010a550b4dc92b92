"""LayerNorm over the last dimension, optionally fused with a residual add (Apex/Liger style).

``layer_norm(x, weight, bias, eps=1e-5, residual=None)``
    x: [..., C]; weight, bias: [C] (bias may be None). Statistics in fp32 (fp64 for fp64 input).
    Returns y = LayerNorm(x) in x's dtype, or, with ``residual`` ([..., C], same shape as x),
    the pair ``(LayerNorm(x + residual), x + residual)`` where the sum is rounded to x's dtype first,
    exactly as ``x + residual`` would be in PyTorch.

Three implementations share that signature: :func:`layer_norm` (Triton), :func:`layer_norm_reference`
(naive PyTorch, the oracle) and :func:`layer_norm_torch` (``torch.nn.functional.layer_norm``). All three
are differentiable; the Triton op's backward is a fused kernel (Liger-Kernel style: dx from the fp32
mean/rstd the forward saves, dweight/dbias summed per program, then over programs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .utils import (
    TRITON_DTYPES, AOTConfig, aot_config, cast_rne, interpreting, launch_with_fallback, records_grad, require_triton,
    tl, triton,
)  # fmt: skip

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
    Mean,  # *fp32 [n_rows]: the row means, for the backward (unused unless STORE_STATS)
    Rstd,  # *fp32 [n_rows]: 1 / sqrt(var + eps) (unused unless STORE_STATS)
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
    STORE_STATS: tl.constexpr = False,
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
    if STORE_STATS:
        tl.store(Mean + rows, mean, mask=row_ok)
        tl.store(Rstd + rows, rstd, mask=row_ok)
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)  # [BLOCK_C]
    y = diff * rstd[:, None] * w[None, :]
    if HAS_BIAS:
        b = tl.load(Bias + cols, mask=col_ok, other=0.0).to(tl.float32)
        y = y + b[None, :]
    tl.store(Y + y_offs, cast_rne(y, Y.dtype.element_ty), mask=tile_ok)


def _block_shape(C: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_C, num_warps) for rows of width C, the same on every GPU architecture (the
    kernels have no dots). The 128-column tile (32 rows) takes 8 warps: on 4, ptxas under triton 3.6
    spilled its residual variant on sm_80 (32 B)."""
    block_c = triton.next_power_of_2(C)
    block_r = max(1, _TILE_ELEMS // block_c)
    num_warps = 8 if block_c == 128 else min(16, max(4, (block_r * block_c) // 1024))
    return block_r, block_c, num_warps


def _smaller(launch: dict) -> dict:
    """The next smaller configuration of a LayerNorm launch after an OutOfResources: half the rows (a
    row is never split, so at one row there is none: ``launch`` itself)."""
    return {**launch, "BLOCK_R": max(1, launch["BLOCK_R"] // 2)}


def _bwd_block_shape(C: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_C, num_warps) of the backward: the forward's tile, twice the warps (it holds
    x, dy and dx live where the forward holds x and y), at most 8: 16 warps cap a thread at 128
    registers, and the 8192-column tile (C = 5120) spills there. The 1024- and 2048-column tiles
    (C = 640..1280) take half the forward's rows on 4 warps: with the forward's tile on 8 warps,
    ptxas under triton 3.6 spilled the residual-gradient variants (8-32 B)."""
    block_r, block_c, num_warps = _block_shape(C)
    if block_c in (1024, 2048):
        return max(1, block_r // 2), block_c, 4
    return block_r, block_c, min(8, 2 * num_warps)


def _bwd_sums_in_memory(block_c: int, dtype: torch.dtype) -> bool:
    """Whether the backward keeps its dweight/dbias running sums in memory (``SUMS_IN_MEMORY``): for
    the fp32 8192-column tile (C = 5120), where with them in registers ptxas under triton 3.6
    spilled 24 B on sm_90; one row per block makes the extra read and write of two fp32 rows cheap
    beside x, dy and dx. fp16/bf16 keep them in registers: in memory, 3.6 spilled those on sm_80."""
    return block_c >= 8192 and dtype == torch.float32


# Backward programs under the interpreter (few: each one's row blocks loop, which is what is tested).
_BWD_PROGRAMS_INTERPRET = 4


def _bwd_programs(n_blocks: int, device: torch.device) -> int:
    """Programs of a backward launch over ``n_blocks`` row blocks: on CUDA 4 per SM (each sums its
    blocks' dweight/dbias into one fp32 row, which the host then reduces), at most one per block."""
    if interpreting() or device.type != "cuda":
        return max(1, min(n_blocks, _BWD_PROGRAMS_INTERPRET))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(n_blocks, 4 * sms))


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


@triton.jit
def _layer_norm_bwd_kernel(
    X,  # *dtype, the normalised rows (x, or s = x + residual), addressed like the forward's X
    DY,  # *dtype [n_rows, C] contiguous: gradient of y
    DS,  # *dtype [n_rows, C] contiguous: gradient of s (unused unless HAS_DS)
    W,  # *wdtype [C]
    Mean,  # *fp32 [n_rows], saved by the forward
    Rstd,  # *fp32 [n_rows], saved by the forward
    DX,  # *dtype [n_rows, C] contiguous: gradient of the normalised input (+ DS)
    DW,  # *fp32 [n_programs, C]: this program's partial sum of dy * xhat
    DB,  # *fp32 [n_programs, C]: this program's partial sum of dy (unused unless HAS_BIAS)
    n_rows,
    n_inner,
    stride_xo,
    stride_xi,
    C,
    HAS_DS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    SUMS_IN_MEMORY: tl.constexpr = False,
):
    """Liger-style LayerNorm backward: each program walks the row blocks pid, pid + n_programs, ...,
    writes dx = rstd * (w*dy - mean(w*dy) - xhat * mean(w*dy*xhat)) (+ ds) for each, and keeps fp32
    running sums of dy * xhat and dy per column, stored once at the end and reduced on the host.
    SUMS_IN_MEMORY: the running sums live in the program's own (zeroed) DW/DB rows instead of
    registers, added to per row block: the 8192-column tile spills with them in registers."""
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_C)  # [BLOCK_C]
    col_ok = cols < C
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)  # [BLOCK_C]
    dw_acc = tl.zeros([BLOCK_C], tl.float32)
    db_acc = tl.zeros([BLOCK_C], tl.float32)
    for blk in range(pid, tl.cdiv(n_rows, BLOCK_R), n_progs):
        rows = blk * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)  # [BLOCK_R], int64 offsets
        row_ok = rows < n_rows
        tile_ok = row_ok[:, None] & col_ok[None, :]  # [BLOCK_R, BLOCK_C]
        outer = rows // n_inner
        inner = rows % n_inner
        x_ptrs = X + (outer * stride_xo + inner * stride_xi)[:, None] + cols[None, :]
        x = tl.load(x_ptrs, mask=tile_ok, other=0.0).to(tl.float32)
        offs = rows[:, None] * C + cols[None, :]
        dy = tl.load(DY + offs, mask=tile_ok, other=0.0).to(tl.float32)
        mean = tl.load(Mean + rows, mask=row_ok, other=0.0)  # [BLOCK_R]
        rstd = tl.load(Rstd + rows, mask=row_ok, other=0.0)
        xhat = tl.where(tile_ok, (x - mean[:, None]) * rstd[:, None], 0.0)
        wdy = dy * w[None, :]
        c1 = tl.sum(xhat * wdy, axis=1) / C  # [BLOCK_R]
        c2 = tl.sum(wdy, axis=1) / C
        dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        if HAS_DS:
            dx += tl.load(DS + offs, mask=tile_ok, other=0.0).to(tl.float32)
        tl.store(DX + offs, cast_rne(dx, DX.dtype.element_ty), mask=tile_ok)
        if SUMS_IN_MEMORY:
            tl.debug_barrier()  # the previous row block's stores of this row are visible to all threads
            dw_row = DW + pid * C + cols
            tl.store(dw_row, tl.load(dw_row, mask=col_ok, other=0.0) + tl.sum(dy * xhat, axis=0), mask=col_ok)
            if HAS_BIAS:
                db_row = DB + pid * C + cols
                tl.store(db_row, tl.load(db_row, mask=col_ok, other=0.0) + tl.sum(dy, axis=0), mask=col_ok)
        else:
            dw_acc += tl.sum(dy * xhat, axis=0)
            if HAS_BIAS:
                db_acc += tl.sum(dy, axis=0)
    if not SUMS_IN_MEMORY:
        tl.store(DW + pid * C + cols, dw_acc, mask=col_ok)
        if HAS_BIAS:
            tl.store(DB + pid * C + cols, db_acc, mask=col_ok)


def _layer_norm_fwd(x, weight, bias, eps, residual, store_stats: bool):
    """The forward launch: (y, s or None, mean, rstd, (xn, n_inner, so, si)) where xn is the tensor
    that was normalised (x, or s) and its row addressing; mean/rstd and xn only with ``store_stats``
    (else y, y, None)."""
    C = x.shape[-1]
    n_rows = x.numel() // C if C else 0
    addr_x = _row_addressing(x, None)
    if addr_x is None:
        addr_x = _row_addressing(x.contiguous(), None)
    x, n_inner, sxo, sxi = addr_x
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    has_res = residual is not None  # (residual may be x itself)
    if has_res:
        addr_r = _row_addressing(residual, n_inner)
        if addr_r is None:
            addr_r = _row_addressing(residual.contiguous(), n_inner)
        residual, _, sro, sri = addr_r
        s = torch.empty_like(y)
    else:
        residual, s, sro, sri = x, y, 0, 0
    if store_stats:
        mean, rstd = torch.empty((2, n_rows), dtype=torch.float32, device=x.device)
        xn = (s, *_row_addressing(s, None)[1:]) if has_res else (x, n_inner, sxo, sxi)
    else:
        mean = rstd = y  # never written: STORE_STATS is False
        xn = None
    if n_rows:
        block_r, block_c, num_warps = _block_shape(C)
        launch = dict(
            HAS_RES=has_res, HAS_BIAS=bias is not None,
            BLOCK_R=block_r, BLOCK_C=block_c, STORE_STATS=store_stats, num_warps=num_warps,
        )  # fmt: skip
        args = (x, residual, weight, bias if bias is not None else weight, y, s, mean, rstd,
                n_rows, n_inner, sxo, sxi, sro, sri, C, eps)  # fmt: skip
        launch_with_fallback(
            "layer_norm", launch, _smaller(launch),
            lambda cfg: _layer_norm_fwd_kernel[(triton.cdiv(n_rows, cfg["BLOCK_R"]),)](*args, **cfg),
        )
    return y, (s if has_res else None), mean, rstd, xn


class _LayerNormFn(torch.autograd.Function):
    """:func:`layer_norm` under autograd: the forward kernel also stores the fp32 row mean and rstd,
    the backward is :func:`_layer_norm_bwd_kernel`. Outputs ``y``, or ``(y, s)`` with a residual."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, eps):
        y, s, mean, rstd, (xn, n_inner, so, si) = _layer_norm_fwd(x, weight, bias, eps, residual, True)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(xn, weight, mean, rstd)
        ctx.addressing = (n_inner, so, si)
        ctx.has_bias, ctx.has_res, ctx.x_shape = bias is not None, residual is not None, x.shape
        return y if s is None else (y, s)

    @staticmethod
    @torch.autograd.function.once_differentiable  # double backward: a clear error
    def backward(ctx, dy, ds=None):
        xn, weight, mean, rstd = ctx.saved_tensors
        n_inner, so, si = ctx.addressing
        C = weight.shape[0]
        n_rows = mean.numel()
        if dy is None and ds is None:
            return None, None, None, None, None
        dy = torch.zeros(ctx.x_shape, dtype=xn.dtype, device=xn.device) if dy is None else dy
        dy = dy.to(xn.dtype).contiguous()
        dx = torch.empty(ctx.x_shape, dtype=xn.dtype, device=xn.device)
        if n_rows:
            has_ds = ds is not None
            ds = ds.to(xn.dtype).contiguous() if has_ds else dy
            block_r, block_c, num_warps = _bwd_block_shape(C)
            launch = dict(
                HAS_DS=has_ds, HAS_BIAS=ctx.has_bias, BLOCK_R=block_r, BLOCK_C=block_c,
                SUMS_IN_MEMORY=_bwd_sums_in_memory(block_c, xn.dtype), num_warps=num_warps,
            )  # fmt: skip

            def run(cfg):
                n_progs = _bwd_programs(triton.cdiv(n_rows, cfg["BLOCK_R"]), xn.device)
                # [dweight, dbias] partial sums, one row per program (summed into: zeros)
                alloc = torch.zeros if cfg["SUMS_IN_MEMORY"] else torch.empty
                partial = alloc((2, n_progs, C), dtype=torch.float32, device=xn.device)
                _layer_norm_bwd_kernel[(n_progs,)](
                    xn, dy, ds, weight, mean, rstd, dx, partial[0], partial[1], n_rows, n_inner, so, si, C, **cfg
                )
                return partial

            partial = launch_with_fallback("layer_norm_bwd", launch, _smaller(launch), run)
        else:
            partial = torch.zeros((2, 1, C), dtype=torch.float32, device=xn.device)  # no rows: zero gradients
        dweight = partial[0].sum(0).to(weight.dtype)
        dbias = partial[1].sum(0).to(weight.dtype) if ctx.has_bias else None
        return dx, dweight, dbias, (dx if ctx.has_res else None), None


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
    Differentiable: with grad enabled and any input requiring grad, the backward is a fused Triton
    kernel (gradients of x, weight, bias and residual; both ``y`` and ``s`` may receive gradients).
    Tiles depend on C alone (no architecture's resources are special); a launch out of GPU resources
    is retried once with half the rows per program, then is a RuntimeError.
    """
    require_triton()
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"layer_norm (triton) supports fp16/bf16/fp32, got {x.dtype}; use the torch backend")
    C = x.shape[-1]
    if weight.shape != (C,) or (bias is not None and bias.shape != (C,)):
        raise ValueError(f"weight/bias must have shape ({C},), got {tuple(weight.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
    if residual is not None:
        residual = residual.to(x.dtype)
    inputs = (x, weight, bias, residual)
    if records_grad(*inputs):
        return _LayerNormFn.apply(x, weight, bias, residual, eps)
    y, s, *_ = _layer_norm_fwd(x, weight, bias, eps, residual, False)
    return y if s is None else (y, s)


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
    widths it serves; the same on every architecture: the forward, and the backward (``_ds``: the
    residual variant, whose sum also receives a gradient). The forward under autograd
    (``STORE_STATS=True``: two more [BLOCK_R] stores) is left out to keep the compile report short."""
    rows = ("n_rows", "n_inner", "stride_xo", "stride_xi")
    configs = []
    for (block_r, block_c, num_warps), widths in _launch_shapes().items():
        tag = "-".join(map(str, widths))
        bwd_r, bwd_c, bwd_warps = _bwd_block_shape(widths[0])
        fwd_launch = dict(HAS_BIAS=True, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=num_warps, num_stages=1)
        bwd_launch = dict(HAS_BIAS=True, BLOCK_R=bwd_r, BLOCK_C=bwd_c, num_warps=bwd_warps, num_stages=1)
        for dt, tdt in TRITON_DTYPES.items():
            ptr = f"*{tdt}"
            fwd = {**dict.fromkeys(("X", "R", "W", "Bias", "Y", "S", "Mean", "Rstd"), ptr),
                   **dict.fromkeys((*rows, "stride_ro", "stride_ri", "C"), "i32"), "eps": "fp32"}  # fmt: skip
            bwd = {**dict.fromkeys(("X", "DY", "DS", "W", "DX"), ptr),
                   **dict.fromkeys(("Mean", "Rstd", "DW", "DB"), "*fp32"),
                   **dict.fromkeys((*rows, "C"), "i32")}  # fmt: skip
            for flag in (False, True):
                fwd_name = f"layer_norm_C{tag}_{tdt}{'_res' * flag}"
                bwd_name = f"layer_norm_bwd_C{tag}_{tdt}{'_ds' * flag}"
                configs.append(aot_config(fwd_name, _layer_norm_fwd_kernel, fwd, {**fwd_launch, "HAS_RES": flag}))
                bwd_flags = {"HAS_DS": flag, "SUMS_IN_MEMORY": _bwd_sums_in_memory(bwd_c, dt)}
                configs.append(aot_config(bwd_name, _layer_norm_bwd_kernel, bwd, {**bwd_launch, **bwd_flags}))
    return configs


__all__ = ["layer_norm", "layer_norm_reference", "layer_norm_torch", "aot_configs"]
