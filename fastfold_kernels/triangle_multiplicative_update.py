"""Triangle multiplicative update, AlphaFold2 Algorithms 11 (outgoing edges) and 12 (incoming edges).

ESMFold/OpenFold flavour (transformers' ``EsmFoldTriangleMultiplicativeUpdate``); returns the UPDATE,
the caller adds it to z::

    zn = LN_in(z)                                                     # [B, L, L, c_z]
    a  = mask * sigmoid(zn @ a_g^T + a_g_b) * (zn @ a_p^T + a_p_b)    # [B, L, L, c_h]; b likewise
    outgoing: x[b,i,j,c] = sum_k a[b,i,k,c] * b[b,j,k,c]
    incoming: x[b,i,j,c] = sum_k a[b,k,i,c] * b[b,k,j,c]
    out = (LN_out(x) @ z_w^T + z_b) * sigmoid(zn @ g_w^T + g_b)       # [B, L, L, c_z]

LN_out statistics are taken in fp32: for fp16 inputs x overflows fp16 (transformers #47470), so x is
never stored in fp16.

Implementations sharing one signature ``(z, mask, w, outgoing=True, eps=1e-5, chunk_size=None)``:
:func:`triangle_multiplicative_update` (Triton), :func:`triangle_multiplicative_update_reference`
(naive PyTorch, the oracle) and :func:`triangle_multiplicative_update_torch` (row-blocked,
memory-lean PyTorch for the CPU default backend).

All three are differentiable in z and every weight (never in the mask): the torch path switches to
out-of-place forms whenever autograd records, and the Triton op's backward recomputes the forward
through the torch path. The torch and Triton paths also take ``add_into_z=True`` (inference-only):
z is updated in place to z + update and returned, without a pair-sized update tensor.

``chunk_size``, as in every op over the pair representation, is an upper bound on the pair rows
handled per block of work; None chooses. It bounds peak memory, never changes the result, and only
the torch path needs it: the reference and the Triton kernels accept and ignore it. The Triton path
has its own knob, ``hidden_chunk``: hidden channels whose a and b are held at once.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .layer_norm import layer_norm_reference
from .utils import (
    TRITON_DTYPES, AOTConfig, aot_config, aot_precisions, cast_rne, dot, dot_block, dot_precision, dot_upcast,
    launch_arch, launch_with_fallback, recompute_backward, records_grad, require_triton, tl, triton,
)  # fmt: skip


class TriMulWeights(NamedTuple):
    """Parameters of one triangle multiplicative update, nn.Linear layout ``[out, in]``.

    c_hidden = ``a_p_weight.shape[0]``; c_z = ``z_weight.shape[0]``.
    """

    ln_in_weight: torch.Tensor  # [c_z]
    ln_in_bias: torch.Tensor  # [c_z]
    a_p_weight: torch.Tensor  # [c_h, c_z]
    a_p_bias: torch.Tensor  # [c_h]
    a_g_weight: torch.Tensor  # [c_h, c_z]
    a_g_bias: torch.Tensor  # [c_h]
    b_p_weight: torch.Tensor  # [c_h, c_z]
    b_p_bias: torch.Tensor  # [c_h]
    b_g_weight: torch.Tensor  # [c_h, c_z]
    b_g_bias: torch.Tensor  # [c_h]
    ln_out_weight: torch.Tensor  # [c_h]
    ln_out_bias: torch.Tensor  # [c_h]
    z_weight: torch.Tensor  # [c_z, c_h]
    z_bias: torch.Tensor  # [c_z]
    g_weight: torch.Tensor  # [c_z, c_z]
    g_bias: torch.Tensor  # [c_z]


def _check_inputs(z: torch.Tensor, mask: torch.Tensor | None, w: TriMulWeights) -> tuple[int, int, int, int]:
    if z.dim() != 4 or z.shape[1] != z.shape[2]:
        raise ValueError(f"z must be [B, L, L, c_z], got {tuple(z.shape)}")
    B, L, _, c_z = z.shape
    c_h = w.a_p_weight.shape[0]
    if w.a_p_weight.shape != (c_h, c_z) or w.z_weight.shape != (c_z, c_h) or w.g_weight.shape != (c_z, c_z):
        raise ValueError(
            f"weights do not fit c_z={c_z}: a_p {tuple(w.a_p_weight.shape)}, z {tuple(w.z_weight.shape)}, "
            f"g {tuple(w.g_weight.shape)}"
        )
    if mask is not None and mask.shape != (B, L, L):
        raise ValueError(f"mask must be [B, L, L] = {(B, L, L)}, got {tuple(mask.shape)}")
    return B, L, c_z, c_h


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def triangle_multiplicative_update_reference(
    z: torch.Tensor,
    mask: torch.Tensor | None,
    w: TriMulWeights,
    outgoing: bool = True,
    eps: float = 1e-5,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Algorithms 11/12, naive and all at once: the oracle. ``chunk_size`` is accepted and ignored.

    Projections and gates run in z's dtype; the triangle product and LN_out statistics in fp32
    (fp64 for fp64 input), as transformers does for half inputs.
    """
    _check_inputs(z, mask, w)
    dt = z.dtype
    wt = TriMulWeights(*(t.to(dt) for t in w))
    zn = layer_norm_reference(z, wt.ln_in_weight, wt.ln_in_bias, eps)  # [B, L, L, c_z]
    m = torch.ones_like(z[..., :1]) if mask is None else mask.to(dt)[..., None]  # [B, L, L, 1]
    a = m * torch.sigmoid(F.linear(zn, wt.a_g_weight, wt.a_g_bias)) * F.linear(zn, wt.a_p_weight, wt.a_p_bias)
    b = m * torch.sigmoid(F.linear(zn, wt.b_g_weight, wt.b_g_bias)) * F.linear(zn, wt.b_p_weight, wt.b_p_bias)
    acc = _accumulate_dtype(dt)
    a, b = a.to(acc), b.to(acc)  # [B, L, L, c_h]
    if outgoing:
        x = torch.einsum("bikc,bjkc->bijc", a, b)  # [B, L, L, c_h]
    else:
        x = torch.einsum("bkic,bkjc->bijc", a, b)
    xn = layer_norm_reference(x, w.ln_out_weight, w.ln_out_bias, eps).to(dt)
    gate = torch.sigmoid(F.linear(zn, wt.g_weight, wt.g_bias))  # [B, L, L, c_z]
    return F.linear(xn, wt.z_weight, wt.z_bias) * gate


# CPU working set of the torch path: elements of one row block's widest temporary (a few MB, so the
# LayerNorm output, projections and the block of x stay cache-warm while the GEMMs stay wide).
_TORCH_ROW_BLOCK_ELEMS = 1 << 21


def _row_block(L: int, c: int, chunk_size: int | None) -> int:
    rows = max(1, _TORCH_ROW_BLOCK_ELEMS // max(1, L * c))
    if chunk_size:
        rows = min(rows, int(chunk_size))
    return max(1, min(L, rows))


def _gated_projection(
    zn: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, mask: torch.Tensor | None, out: torch.Tensor | None
) -> torch.Tensor:
    """``mask * sigmoid(zn @ gate_w^T + gate_b) * (zn @ proj_w^T + proj_b)``, channel-major [c_h, R, L].

    zn [R, L, c_z]; w2 [2 c_h, c_z] = [proj; gate] (b2 likewise); mask [R, L] or None. The GEMM writes
    channel-major so the gating runs on contiguous rows. With ``out`` [c_h, R, L] (inference) the gating
    runs in place and lands in ``out`` without a transposing copy; ``out=None`` is the differentiable form.
    """
    R, L = zn.shape[:2]
    c_h = w2.shape[0] // 2
    p = torch.addmm(b2[:, None], w2, zn.reshape(-1, zn.shape[-1]).t()).view(2, c_h, R, L)  # [2, c_h, R, L]
    proj, gate = p[0], p[1]
    if out is None:
        gate = torch.sigmoid(gate) if mask is None else torch.sigmoid(gate) * mask
        return gate * proj
    gate.sigmoid_()
    if mask is not None:
        gate.mul_(mask)  # [R, L] broadcast over channels
    return torch.mul(gate, proj, out=out)


def triangle_multiplicative_update_torch(
    z: torch.Tensor,
    mask: torch.Tensor | None,
    w: TriMulWeights,
    outgoing: bool = True,
    eps: float = 1e-5,
    chunk_size: int | None = None,
    add_into_z: bool = False,
) -> torch.Tensor:
    """Algorithms 11/12 in memory-lean PyTorch. ``chunk_size``: at most that many pair rows per block
    (None: as many as fit a few-MB working set).

    Both directions are one computation on a view ``v`` of z (z itself for outgoing, z^T for incoming):
    ``y[j, i] = sum_k r[j, k] f[i, k]`` where the *row operand* r comes from rows j of v and the *full
    operand* f from all of v (outgoing: r = a, f = b, y = x; incoming: r = b, f = a, y = x^T, since
    a[k, i] = a_v[i, k]). So f is built once, channel-major [B, c_h, L, L], and then v is walked row
    block by row block: r, the g gate and LN_in are computed from that block of v alone, the product is
    one batched GEMM over channels, and the gated output lands in that block of the result.

    With ``add_into_z`` the result is added into z in place and z is returned: every block of v is read
    before it is written, and f was built before any write, so this equals ``z + update``. Extra memory
    is then f (one pair tensor at c_h == c_z) plus a few row-block temporaries; otherwise a separate
    update tensor is returned as well.

    Differentiable in z and every weight whenever autograd records (the blocks are then computed out
    of place); ``add_into_z`` is inference-only and raises a RuntimeError then.
    """
    B, L, c_z, c_h = _check_inputs(z, mask, w)
    grad = records_grad(z, *w)
    if add_into_z and grad:
        raise RuntimeError(
            "triangle_multiplicative_update_torch: add_into_z=True updates z in place and is inference-only; "
            "with autograd recording (an input requires grad) add the returned update instead "
            "(z + triangle_multiplicative_update_torch(...)) or run under torch.no_grad()"
        )
    dt = z.dtype
    wt = TriMulWeights(*(t.to(dt) for t in w))
    # x in fp16 overflows before LN_out; bf16/fp32 have the range.
    x_dtype = torch.float32 if dt == torch.float16 else dt
    v = z if outgoing else z.transpose(1, 2)  # [B, L, L, c_z]; rows of v are the rows the update fills
    mv = None if mask is None else (mask if outgoing else mask.transpose(1, 2)).to(dt)  # [B, L, L]
    if outgoing:
        row_w, row_b = (wt.a_p_weight, wt.a_g_weight), (wt.a_p_bias, wt.a_g_bias)
        full_w, full_b = (wt.b_p_weight, wt.b_g_weight), (wt.b_p_bias, wt.b_g_bias)
    else:
        row_w, row_b = (wt.b_p_weight, wt.b_g_weight), (wt.b_p_bias, wt.b_g_bias)
        full_w, full_b = (wt.a_p_weight, wt.a_g_weight), (wt.a_p_bias, wt.a_g_bias)
    # Row-block GEMM weights: [r_proj; r_gate] then the output gate g, one addmm per block.
    w_row, b_row = torch.cat(row_w), torch.cat(row_b)  # [2 c_h, c_z]
    w_full, b_full = torch.cat(full_w), torch.cat(full_b)
    ln_w, ln_b = wt.ln_in_weight, wt.ln_in_bias
    ln_out_w, ln_out_b = w.ln_out_weight.to(x_dtype), w.ln_out_bias.to(x_dtype)
    rows = _row_block(L, max(c_z, c_h), chunk_size)

    # 1. The full operand from the unmodified z.
    full = torch.empty((B, c_h, L, L), dtype=dt, device=z.device)  # channel-major [B, c_h, i, k]
    for r0 in range(0, L, rows):
        r1 = min(L, r0 + rows)
        zn = F.layer_norm(v[:, r0:r1], (c_z,), ln_w, ln_b, eps)  # [B, R, L, c_z]
        for bi in range(B):
            m = None if mv is None else mv[bi, r0:r1]
            f = _gated_projection(zn[bi], w_full, b_full, m, out=None if grad else full[bi, :, r0:r1])
            if grad:
                full[bi, :, r0:r1] = f
    if x_dtype != dt:
        full = full.to(x_dtype)

    # 2. Row blocks of v: row operand, product, LN_out, output projection, g gate.
    if add_into_z:
        dest = v
    else:
        out = torch.empty((B, L, L, c_z), dtype=dt, device=z.device)
        dest = out if outgoing else out.transpose(1, 2)
    row_op = None if grad else torch.empty((c_h, rows, L), dtype=dt, device=z.device)
    for r0 in range(0, L, rows):
        r1 = min(L, r0 + rows)
        n = r1 - r0
        zn = F.layer_norm(v[:, r0:r1], (c_z,), ln_w, ln_b, eps)  # [B, R, L, c_z]
        gate = F.linear(zn, wt.g_weight, wt.g_bias).sigmoid_()  # [B, R, L, c_z]
        for bi in range(B):
            m = None if mv is None else mv[bi, r0:r1]
            r_out = None if grad else row_op[:, :n]
            r = _gated_projection(zn[bi], w_row, b_row, m, out=r_out).to(x_dtype)  # [c_h, R, L(k)]
            y = torch.bmm(r, full[bi].transpose(1, 2))  # [c_h, R, L(i)]
            yn = F.layer_norm(y.permute(1, 2, 0), (c_h,), ln_out_w, ln_out_b, eps).to(dt)  # [R, L, c_h]
            del y
            upd = F.linear(yn, wt.z_weight, wt.z_bias).mul_(gate[bi])  # [R, L, c_z]
            if add_into_z:
                dest[bi, r0:r1] += upd
            else:
                dest[bi, r0:r1] = upd
        del zn, gate
    return z if add_into_z else out


# Lets model code ask for the in-place form without knowing which backend it runs.
triangle_multiplicative_update_torch.supports_add_into_z = True


# ---------------------------------------------------------------------------------------------------
# Triton path: three kernels.
#   1. project: LN_in(z) -> four projections -> sigmoid gating -> mask; a and b stored channel-major
#      [B, n, L, L] in z's dtype for a chunk of n = hidden_chunk hidden channels (all by default).
#   2. product: per channel, the L x L x L triangle product with tl.dot (fp32 accumulate), written
#      straight into the x buffer in [B, L, L, c_h] layout; the x buffer is the output tensor itself
#      unless z is fp16 (x would overflow fp16) or c_h != c_z.
#   3. output: row tile by row tile, LN_out(x) @ z_w^T + z_b times the g gate recomputed from z, so
#      neither LN_in(z) nor g is ever stored; works in place on the output tensor, or with add_into_z
#      adds the update into z in place (each program reads only the z rows it writes).
# Extra memory: returning the update, the update tensor plus a and b (twice the pair tensor at
# c_h == c_z by default; hidden_chunk trades it for recomputing LN_in), plus a separate x buffer for
# fp16 inputs (fp32) or c_h != c_z. With add_into_z: x (the one pair-sized buffer, fp32 for fp16 z)
# plus a and b for c_h // 8 channels (a quarter of x): see triangle_multiplicative_update's formula.
# Tiles: _blocks(dtype, dot precision, arch, c_z); every launch falls back once to half its tiles on
# OutOfResources (_launch).
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _ln_rows(t, w_ptr, b_ptr, offs, ok, n, eps):
    """LayerNorm of the rows of an fp32 tile [R, BLOCK] whose columns ``ok`` are real; padding -> 0."""
    mean = tl.sum(t, axis=1) / n  # [R]
    diff = tl.where(ok[None, :], t - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=1) / n + eps)  # [R]
    w = tl.load(w_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    return diff * rstd[:, None] * w[None, :] + b[None, :]  # padded columns: w = b = 0


@triton.jit
def _linear_t(x, w_ptr, b_ptr, offs_in, in_ok, offs_out, out_ok, n_in, DOT_PRECISION: tl.constexpr,
              DOT_UPCAST: tl.constexpr):
    """x [R, BLOCK_IN] @ W[offs_out, offs_in]^T + b[offs_out] for nn.Linear W [out, in] (fp32 result)."""
    w = tl.load(
        w_ptr + offs_out[None, :] * n_in + offs_in[:, None], mask=in_ok[:, None] & out_ok[None, :], other=0.0
    )  # [BLOCK_IN, BLOCK_OUT]
    b = tl.load(b_ptr + offs_out, mask=out_ok, other=0.0).to(tl.float32)
    return dot(x, w, None, DOT_PRECISION, DOT_UPCAST) + b[None, :]


@triton.jit
def _ln_linear4_chunked(
    z_rows, mean, rstd, LnW, LnB, offs_c0, offs_h, h_ok, p_ok,
    Wap, Bap, Wag, Bag, Wbp, Bbp, Wbg, Bbg,
    C_Z: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
):
    """The four projections LN_in(z) @ W^T + b for channels ``offs_h``, streaming c_z in BLOCK_K slices.

    ``z_rows`` points at the tile's rows [BLOCK_P, 1]; LN_in(z) is recomputed slice by slice from the
    row statistics (the same per-element arithmetic as :func:`_ln_rows`). A dot over the whole c_z
    keeps a [16, c_z] operand fragment per warp (three of them for 3xTF32): on sm_80 that spills.
    """
    acc_ap = tl.zeros([BLOCK_P, BLOCK_H], tl.float32)
    acc_ag = tl.zeros([BLOCK_P, BLOCK_H], tl.float32)
    acc_bp = tl.zeros([BLOCK_P, BLOCK_H], tl.float32)
    acc_bg = tl.zeros([BLOCK_P, BLOCK_H], tl.float32)
    for k0 in range(0, C_Z, BLOCK_K):
        offs_k = k0 + offs_c0  # [BLOCK_K]
        k_ok = offs_k < C_Z
        z = tl.load(z_rows + offs_k[None, :], mask=p_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        lw = tl.load(LnW + offs_k, mask=k_ok, other=0.0).to(tl.float32)
        lb = tl.load(LnB + offs_k, mask=k_ok, other=0.0).to(tl.float32)
        diff = tl.where(k_ok[None, :], z - mean[:, None], 0.0)
        zn = cast_rne(diff * rstd[:, None] * lw[None, :] + lb[None, :], DOT_DTYPE)  # [BLOCK_P, BLOCK_K]
        w_ptrs = offs_h[None, :] * C_Z + offs_k[:, None]  # [BLOCK_K, BLOCK_H]: W^T slice
        w_ok = k_ok[:, None] & h_ok[None, :]
        acc_ap = dot(zn, tl.load(Wap + w_ptrs, mask=w_ok, other=0.0), acc_ap, DOT_PRECISION, DOT_UPCAST)
        acc_ag = dot(zn, tl.load(Wag + w_ptrs, mask=w_ok, other=0.0), acc_ag, DOT_PRECISION, DOT_UPCAST)
        acc_bp = dot(zn, tl.load(Wbp + w_ptrs, mask=w_ok, other=0.0), acc_bp, DOT_PRECISION, DOT_UPCAST)
        acc_bg = dot(zn, tl.load(Wbg + w_ptrs, mask=w_ok, other=0.0), acc_bg, DOT_PRECISION, DOT_UPCAST)
    a_p = acc_ap + tl.load(Bap + offs_h, mask=h_ok, other=0.0).to(tl.float32)[None, :]
    a_g = acc_ag + tl.load(Bag + offs_h, mask=h_ok, other=0.0).to(tl.float32)[None, :]
    b_p = acc_bp + tl.load(Bbp + offs_h, mask=h_ok, other=0.0).to(tl.float32)[None, :]
    b_g = acc_bg + tl.load(Bbg + offs_h, mask=h_ok, other=0.0).to(tl.float32)[None, :]
    return a_p, a_g, b_p, b_g


@triton.jit
def _trimul_project_kernel(
    Z,  # *dtype [B, L*L, C_Z] contiguous
    Mask,  # *fp32 [B, L*L] (unused unless HAS_MASK)
    LnW, LnB,  # LN_in [C_Z]
    Wap, Bap, Wag, Bag, Wbp, Bbp, Wbg, Bbg,  # [C_H, C_Z], [C_H]
    A, Bout,  # *dtype [B, n_chunk, L*L] channel-major chunk buffers
    LL,  # L * L
    h_start,  # first hidden channel of this chunk
    n_h,  # channels in this chunk
    stride_ab,  # n_chunk * L * L
    eps,
    C_Z: tl.constexpr,
    C_H: tl.constexpr,
    BLOCK_CZ: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    HAS_MASK: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_UPCAST: tl.constexpr,
):
    """Kernel 1: a, b of Algorithms 11/12 lines 2-3 for BLOCK_P pair positions and channels [h_start, +n_h).

    BLOCK_K == BLOCK_CZ: LN_in(z) is held whole and each projection is one dot over c_z; a smaller
    BLOCK_K streams c_z in slices (see :func:`_ln_linear4_chunked`).
    """
    pid_p = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_p = pid_p.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)  # [BLOCK_P] positions i * L + j
    p_ok = offs_p < LL
    offs_c = tl.arange(0, BLOCK_CZ)
    c_ok = offs_c < C_Z

    z_rows = Z + pid_b * LL * C_Z + offs_p[:, None] * C_Z  # [BLOCK_P, 1]
    z = tl.load(z_rows + offs_c[None, :], mask=p_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
    # [BLOCK_P, BLOCK_CZ]
    if BLOCK_K == BLOCK_CZ:
        zn = cast_rne(_ln_rows(z, LnW, LnB, offs_c, c_ok, C_Z, eps), A.dtype.element_ty)  # dot operands in z's dtype
    else:
        mean = tl.sum(z, axis=1) / C_Z  # [BLOCK_P]
        diff = tl.where(c_ok[None, :], z - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=1) / C_Z + eps)  # [BLOCK_P]
    if HAS_MASK:
        m = tl.load(Mask + pid_b * LL + offs_p, mask=p_ok, other=0.0)  # [BLOCK_P]
    else:
        m = tl.full([BLOCK_P], 1.0, tl.float32)

    out_base = pid_b * stride_ab
    for h0 in range(0, n_h, BLOCK_H):
        offs_hl = h0 + tl.arange(0, BLOCK_H)  # [BLOCK_H] channel within the chunk
        h_ok = offs_hl < n_h
        offs_h = h_start + offs_hl  # channel within c_h
        ptrs = out_base + offs_hl[None, :].to(tl.int64) * LL + offs_p[:, None]  # [BLOCK_P, BLOCK_H]
        st_ok = p_ok[:, None] & h_ok[None, :]
        if BLOCK_K == BLOCK_CZ:
            a_p = _linear_t(zn, Wap, Bap, offs_c, c_ok, offs_h, h_ok, C_Z, DOT_PRECISION, DOT_UPCAST)  # [BLOCK_P, BLOCK_H]
            a_g = _linear_t(zn, Wag, Bag, offs_c, c_ok, offs_h, h_ok, C_Z, DOT_PRECISION, DOT_UPCAST)
            a = tl.sigmoid(a_g) * a_p * m[:, None]
            tl.store(A + ptrs, cast_rne(a, A.dtype.element_ty), mask=st_ok)
            b_p = _linear_t(zn, Wbp, Bbp, offs_c, c_ok, offs_h, h_ok, C_Z, DOT_PRECISION, DOT_UPCAST)
            b_g = _linear_t(zn, Wbg, Bbg, offs_c, c_ok, offs_h, h_ok, C_Z, DOT_PRECISION, DOT_UPCAST)
        else:
            a_p, a_g, b_p, b_g = _ln_linear4_chunked(
                z_rows, mean, rstd, LnW, LnB, tl.arange(0, BLOCK_K), offs_h, h_ok, p_ok,
                Wap, Bap, Wag, Bag, Wbp, Bbp, Wbg, Bbg,
                C_Z, BLOCK_P, BLOCK_H, BLOCK_K, A.dtype.element_ty, DOT_PRECISION, DOT_UPCAST,
            )  # fmt: skip
            a = tl.sigmoid(a_g) * a_p * m[:, None]
            tl.store(A + ptrs, cast_rne(a, A.dtype.element_ty), mask=st_ok)
        b = tl.sigmoid(b_g) * b_p * m[:, None]
        tl.store(Bout + ptrs, cast_rne(b, Bout.dtype.element_ty), mask=st_ok)


@triton.jit
def _trimul_product_kernel(
    A, Bm,  # *dtype [B, n_chunk, L, L] channel-major
    X,  # *xdtype [B, L, L, C_X]
    L,
    stride_ab,  # n_chunk * L * L
    stride_am, stride_ak,  # A[c] read as an [L(i), L(k)] matrix
    stride_bk, stride_bn,  # B[c] read as an [L(k), L(j)] matrix
    h_start,  # x channel of chunk channel 0
    C_X: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_UPCAST: tl.constexpr,
):
    """Kernel 2: x[b, i, j, c] = sum_k A_c[i, k] B_c[k, j] for one channel and one [BLOCK_M, BLOCK_N] tile.

    The channel is the fastest grid axis, so programs running together write neighbouring channels of
    the same x tile and their strided stores merge in L2.
    """
    c = tl.program_id(0)
    tile = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    n_tn = tl.cdiv(L, BLOCK_N)
    tm = tile // n_tn
    tn = tile % n_tn
    offs_m = tm * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M] rows i
    offs_n = tn * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] columns j
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < L
    n_ok = offs_n < L
    base = pid_b * stride_ab + c.to(tl.int64) * L * L
    a_ptrs = A + base + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak  # [BLOCK_M, BLOCK_K]
    b_ptrs = Bm + base + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn  # [BLOCK_K, BLOCK_N]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, L, BLOCK_K):
        k_ok = (k0 + offs_k) < L
        a = tl.load(a_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = dot(a, b, acc, DOT_PRECISION, DOT_UPCAST)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    pos = offs_m[:, None].to(tl.int64) * L + offs_n[None, :]  # [BLOCK_M, BLOCK_N]
    x_ptrs = X + (pid_b * L * L + pos) * C_X + h_start + c
    tl.store(x_ptrs, cast_rne(acc, X.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _row_stats(t, ok, n, eps):
    """Mean and 1/std of the rows of an fp32 tile [R, BLOCK] whose columns ``ok`` are real."""
    mean = tl.sum(t, axis=1) / n  # [R]
    diff = tl.where(ok[None, :], t - mean[:, None], 0.0)
    return mean, 1.0 / tl.sqrt(tl.sum(diff * diff, axis=1) / n + eps)


@triton.jit
def _ln_linear_streamed(
    rows, mean, rstd, ln_w, ln_b, w_ptr, b_ptr, p_ok, offs_n, n_ok,
    N_IN: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
):
    """LN(t) @ W[offs_n]^T + b[offs_n] (fp32 [BLOCK_P, BLOCK_N]) for the rows ``rows`` [BLOCK_P, 1] of t,
    streaming the N_IN inputs in BLOCK_K slices re-read from memory and normalised with the rows'
    ``mean``/``rstd`` (the arithmetic of :func:`_ln_rows`): an FMA (ieee) dot keeps each thread's
    rows of both operands over the whole K in registers, so K stays short."""
    acc = tl.zeros([BLOCK_P, BLOCK_N], tl.float32)
    for k0 in range(0, N_IN, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
        k_ok = offs_k < N_IN
        t = tl.load(rows + offs_k[None, :], mask=p_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        lw = tl.load(ln_w + offs_k, mask=k_ok, other=0.0).to(tl.float32)
        lb = tl.load(ln_b + offs_k, mask=k_ok, other=0.0).to(tl.float32)
        diff = tl.where(k_ok[None, :], t - mean[:, None], 0.0)
        tn = cast_rne(diff * rstd[:, None] * lw[None, :] + lb[None, :], DOT_DTYPE)  # [BLOCK_P, BLOCK_K]
        w = tl.load(
            w_ptr + offs_n[None, :] * N_IN + offs_k[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0.0
        )  # [BLOCK_K, BLOCK_N]: W^T slice
        acc = dot(tn, w, acc, DOT_PRECISION, DOT_UPCAST)
    return acc + tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]


@triton.jit
def _trimul_output_kernel(
    X,  # *xdtype [B, L*L, C_H]
    Z,  # *dtype [B, L*L, C_Z]
    LnInW, LnInB, LnOutW, LnOutB,
    Wz, Bz,  # [C_Z, C_H], [C_Z]
    Wg, Bg,  # [C_Z, C_Z], [C_Z]
    Out,  # *dtype [B, L*L, C_Z]; X itself, or Z itself when ADD_Z
    LL,
    eps,
    C_Z: tl.constexpr,
    C_H: tl.constexpr,
    BLOCK_CZ: tl.constexpr,
    BLOCK_CH: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ADD_Z: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_UPCAST: tl.constexpr,
):
    """Kernel 3: out = (LN_out(x) @ z_w^T + z_b) * sigmoid(LN_in(z) @ g_w^T + g_b) for BLOCK_P positions;
    with ADD_Z, z + out (rounded once) instead.

    The output channels are produced BLOCK_N at a time, so only two [BLOCK_P, BLOCK_N] accumulators
    are live. BLOCK_K >= both padded widths: LN_out(x) and LN_in(z) are held whole; smaller (the ieee
    tiles): each dot streams its K in BLOCK_K slices re-read from x and z (:func:`_ln_linear_streamed`),
    and BLOCK_N must cover c_z, since with ADD_Z a later step would re-read z columns already written.
    The x and z tiles are loaded whole before the first store, so Out may alias X. With ADD_Z, Out is
    Z: a program reads and writes only its own BLOCK_P rows of z, every store's value depends on all
    of that row's loads (LN_in statistics), and the z slice each step adds is read just before it is
    overwritten, so the update goes into z in place.
    """
    STREAM_K: tl.constexpr = BLOCK_K < BLOCK_CH or BLOCK_K < BLOCK_CZ
    tl.static_assert(not STREAM_K or BLOCK_N >= C_Z, "streamed K needs one output step")
    pid_p = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_p = pid_p.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)  # [BLOCK_P]
    p_ok = offs_p < LL
    offs_h = tl.arange(0, BLOCK_CH)
    h_ok = offs_h < C_H
    offs_c = tl.arange(0, BLOCK_CZ)
    c_ok = offs_c < C_Z

    x_rows = X + pid_b * LL * C_H + offs_p[:, None] * C_H  # [BLOCK_P, 1]
    z_rows = Z + pid_b * LL * C_Z + offs_p[:, None] * C_Z
    x = tl.load(x_rows + offs_h[None, :], mask=p_ok[:, None] & h_ok[None, :], other=0.0).to(tl.float32)
    z = tl.load(z_rows + offs_c[None, :], mask=p_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
    # x [BLOCK_P, BLOCK_CH], z [BLOCK_P, BLOCK_CZ]; LayerNorm statistics in fp32
    if STREAM_K:
        x_mean, x_rstd = _row_stats(x, h_ok, C_H, eps)
        z_mean, z_rstd = _row_stats(z, c_ok, C_Z, eps)
    else:
        xn = cast_rne(_ln_rows(x, LnOutW, LnOutB, offs_h, h_ok, C_H, eps), Out.dtype.element_ty)
        zn = cast_rne(_ln_rows(z, LnInW, LnInB, offs_c, c_ok, C_Z, eps), Out.dtype.element_ty)
    out_rows = Out + pid_b * LL * C_Z + offs_p[:, None] * C_Z  # [BLOCK_P, 1]
    for n0 in range(0, C_Z, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)  # [BLOCK_N] output channels
        n_ok = offs_n < C_Z
        st_ok = p_ok[:, None] & n_ok[None, :]
        if STREAM_K:
            upd = _ln_linear_streamed(
                x_rows, x_mean, x_rstd, LnOutW, LnOutB, Wz, Bz, p_ok, offs_n, n_ok,
                C_H, BLOCK_P, BLOCK_N, BLOCK_K, Out.dtype.element_ty, DOT_PRECISION, DOT_UPCAST,
            )  # fmt: skip
            g = _ln_linear_streamed(
                z_rows, z_mean, z_rstd, LnInW, LnInB, Wg, Bg, p_ok, offs_n, n_ok,
                C_Z, BLOCK_P, BLOCK_N, BLOCK_K, Out.dtype.element_ty, DOT_PRECISION, DOT_UPCAST,
            )  # fmt: skip
        else:
            upd = _linear_t(xn, Wz, Bz, offs_h, h_ok, offs_n, n_ok, C_H, DOT_PRECISION, DOT_UPCAST)  # [BLOCK_P, BLOCK_N]
            g = _linear_t(zn, Wg, Bg, offs_c, c_ok, offs_n, n_ok, C_Z, DOT_PRECISION, DOT_UPCAST)
        val = upd * tl.sigmoid(g)
        if ADD_Z:  # columns [n0, n0 + BLOCK_N) of this program's rows, not written yet
            val += tl.load(z_rows + offs_n[None, :], mask=st_ok, other=0.0).to(tl.float32)
        tl.store(out_rows + offs_n[None, :], cast_rne(val, Out.dtype.element_ty), mask=st_ok)


class _Blocks(NamedTuple):
    """Tile sizes and launch options of the three kernels for one (dtype, dot precision, arch)."""

    proj_p: int
    proj_h: int
    proj_k: int  # c_z slice per projection dot; c_z's padded width = no slicing
    proj_warps: int
    proj_stages: int
    prod_m: int
    prod_n: int
    prod_k: int
    prod_warps: int
    prod_stages: int
    out_p: int
    out_n: int  # output channels per step of the output kernel
    out_k: int  # K slice of the output kernel's dots; 0 = whole (LN_out(x), LN_in(z) held in registers)
    out_warps: int


# The tiles the interpreter runs outside emulate_arch (launch_arch is None there): sm_90's 3xTF32/half
# tiles under every fp32 precision, as the interpreter tests always have: the fewest programs, so the
# fastest there (it ignores warps, stages and the precision). The CUDA tiles of every arch and
# precision run under emulate_arch in tests/test_triangle_multiplicative_update.py.
_INTERPRETER_ARCH, _INTERPRETER_PRECISION = 90, "tf32x3"


def _blocks(dtype: torch.dtype, precision: str, arch: int | None, c_z: int = 128) -> _Blocks:
    """The tiles of a launch in ``dtype`` whose fp32 dots run in ``precision`` (see ``dot_precision``;
    ignored for fp16/bf16) on sm_<arch> (None, the interpreter: sm_90's 3xTF32 tiles): used by the
    launcher and by :func:`aot_configs`, chosen from AOT compiles (profiling/compile_report.py) as the largest without
    register spills under triton 3.6 and 3.9 that keep tensor cores where the dots have them.

    fp32 "tf32x3"/"tf32": 3xTF32 (3 MMAs per product, hi/lo operand splits) or TF32 on tensor cores,
    twice the shared memory per element of half. Hopper's wgmma needs 64 rows per warpgroup, so its
    row tiles stay at 64; sm_80's mma.sync holds a [16, K] operand fragment per warp in registers, so
    there the projection streams c_z in 32-wide slices and the output kernel takes 32-row tiles
    (3xTF32, whose splits triple the operand fragments: 8 product warps and 16-row output tiles;
    with TF32's tiles triton 3.6 spilled 8 B in the product and in the adding output kernel).
    fp32 "ieee": FMA units, no tensor cores; each thread holds its rows of both dot operands over the
    whole K in registers, so on every arch the projection and the output kernel stream K in 16-wide
    slices (the output kernel then makes all c_z output channels in one step).
    """
    if arch is None:
        arch, precision = _INTERPRETER_ARCH, _INTERPRETER_PRECISION
    block_cz = dot_block(c_z)
    if dtype == torch.float32:
        if precision == "ieee":
            return _Blocks(32, 16, 16, 4, 1, 64, 64, 16, 4, 2, 32, block_cz, 16, 8)
        if arch >= 90:
            return _Blocks(64, 16, block_cz, 4, 1, 64, 64, 32, 4, 3, 64, 32, 0, 4)
        if precision == "tf32x3":  # its hi/lo operand splits: 8 product warps, 16-row output tiles
            return _Blocks(64, 16, 32, 4, 1, 64, 64, 32, 8, 3, 16, 64, 0, 8)
        return _Blocks(64, 16, 32, 4, 1, 64, 64, 32, 4, 3, 32, 64, 0, 8)
    if arch >= 90:
        return _Blocks(64, 32, block_cz, 4, 2, 128, 128, 32, 8, 3, 64, 128, 0, 4)
    return _Blocks(64, 32, block_cz, 4, 2, 128, 128, 32, 8, 3, 32, 128, 0, 4)


# Keyword arguments (constexprs, warps, stages) of the three kernels' launches, shared by the launcher
# and aot_configs so the ahead-of-time configs are the launches.


def _project_launch(blk: _Blocks, c_z: int, c_h: int, has_mask: bool, prec: str, upcast: bool) -> dict:
    return dict(
        C_Z=c_z, C_H=c_h, BLOCK_CZ=dot_block(c_z), BLOCK_P=blk.proj_p, BLOCK_H=blk.proj_h, BLOCK_K=blk.proj_k,
        HAS_MASK=has_mask, DOT_PRECISION=prec, DOT_UPCAST=upcast,
        num_warps=blk.proj_warps, num_stages=blk.proj_stages,
    )  # fmt: skip


def _product_launch(blk: _Blocks, c_h: int, prec: str, upcast: bool) -> dict:
    return dict(
        C_X=c_h, BLOCK_M=blk.prod_m, BLOCK_N=blk.prod_n, BLOCK_K=blk.prod_k, DOT_PRECISION=prec, DOT_UPCAST=upcast,
        num_warps=blk.prod_warps, num_stages=blk.prod_stages,
    )  # fmt: skip


def _output_launch(blk: _Blocks, c_z: int, c_h: int, add_z: bool, prec: str, upcast: bool) -> dict:
    return dict(
        C_Z=c_z, C_H=c_h, BLOCK_CZ=dot_block(c_z), BLOCK_CH=dot_block(c_h), BLOCK_P=blk.out_p, BLOCK_N=blk.out_n,
        BLOCK_K=blk.out_k or max(dot_block(c_z), dot_block(c_h)), ADD_Z=add_z, DOT_PRECISION=prec, DOT_UPCAST=upcast,
        num_warps=blk.out_warps, num_stages=1,
    )  # fmt: skip


# The tiles each kernel's next smaller configuration halves after an OutOfResources (their shared
# memory and registers scale with them); 16 is tl.dot's minimum. The output kernel keeps BLOCK_N,
# which its streamed-K (ieee) form needs to cover c_z.
_SHRINK = {
    "trimul_project": ("BLOCK_P", "BLOCK_K"),
    "trimul_product": ("BLOCK_M", "BLOCK_N"),
    "trimul_output": ("BLOCK_P",),
}


def _smaller(op: str, launch: dict) -> dict:
    """The next smaller configuration of ``launch``: :data:`_SHRINK`'s tiles halved, one stage."""
    return {**launch, **{k: max(16, launch[k] // 2) for k in _SHRINK[op]}, "num_stages": 1}


def _launch(op: str, kernel, grid, args: tuple, launch: dict) -> None:
    """``kernel[grid(config)](*args, **config)`` through ``launch_with_fallback``: on OutOfResources,
    once more with :func:`_smaller`'s configuration (grid: config -> the launch grid)."""
    launch_with_fallback(op, launch, _smaller(op, launch), lambda cfg: kernel[grid(cfg)](*args, **cfg))


# With add_into_z (and no hidden_chunk), a and b hold 1/_ADD_INTO_Z_CHUNK_DIV of the hidden channels at
# once: together at most a quarter of the x buffer, for recomputing LN_in and the projections'
# z tiles that many times (z is read once per chunk; the projection FLOPs are the same).
_ADD_INTO_Z_CHUNK_DIV = 8


def _hidden_chunk(c_h: int, hidden_chunk: int | None, add_into_z: bool) -> int:
    """Hidden channels whose a and b are held at once: ``hidden_chunk``, else c_h // 8 (at least 1)
    with add_into_z, else all c_h."""
    if hidden_chunk:
        return min(c_h, int(hidden_chunk))
    return max(1, c_h // _ADD_INTO_Z_CHUNK_DIV) if add_into_z else c_h


def triangle_multiplicative_update(
    z: torch.Tensor,
    mask: torch.Tensor | None,
    w: TriMulWeights,
    outgoing: bool = True,
    eps: float = 1e-5,
    chunk_size: int | None = None,
    hidden_chunk: int | None = None,
    add_into_z: bool = False,
) -> torch.Tensor:
    """Triton Algorithms 11/12: z [B, L, L, c_z], mask [B, L, L] or None -> update [B, L, L, c_z], or
    with ``add_into_z`` z itself, updated in place to z + update.

    fp16, bf16 and fp32 inputs; projections and the triangle product accumulate in fp32, and fp32
    dots run in the precision ``torch.get_float32_matmul_precision()`` selects (``dot_precision``:
    "highest" -> full fp32 on FMA units, "high" -> 3xTF32, "medium" -> TF32).
    ``chunk_size`` (pair rows per block) is accepted and ignored: the kernels' memory does not depend
    on rows. ``hidden_chunk``: hidden channels whose a and b are held at once (None: all of them, or
    c_h // 8 with ``add_into_z``).

    Extra memory with ``add_into_z`` (inference, contiguous z), in bytes:
    ``B L^2 (c_h s_x + 2 n s_z)`` with s_z z's element size, s_x = 4 for fp16 z (x is kept in fp32)
    else s_z, n = ``hidden_chunk`` or max(1, c_h // 8) (a, b: a quarter of x at most), plus
    ``4 B L^2`` for a mask that is not contiguous fp32 already, weights not in z's dtype cast to it,
    and ``8 c_h`` for LN_out's weights in fp32 (a z that is not contiguous costs a contiguous copy
    more: the kernels update it, then it is copied into z). Without it: the update
    (``B L^2 c_z s_z``), a and b (``2 B L^2 n s_z``, n = c_h by default), and x when it cannot live in
    the update (c_h != c_z or fp16).

    Differentiable in z and every weight: backward recomputes the forward through
    :func:`triangle_multiplicative_update_torch` (with ``chunk_size``). ``add_into_z`` is
    inference-only: a RuntimeError when autograd records.
    """
    require_triton()
    _check_inputs(z, mask, w)
    if z.dtype not in TRITON_DTYPES:
        raise TypeError(f"triangle_multiplicative_update (triton) supports fp16/bf16/fp32, got {z.dtype}")
    if add_into_z:
        if records_grad(z, *w):
            raise RuntimeError(
                "triangle_multiplicative_update: add_into_z=True updates z in place and is inference-only; "
                "with autograd recording (an input requires grad) add the returned update instead "
                "(z + triangle_multiplicative_update(...)) or run under torch.no_grad()"
            )
        return _trimul_kernels(z, mask, w, outgoing, eps, hidden_chunk, add_into_z=True)
    return recompute_backward(
        lambda z, *w: _trimul_kernels(z, mask, TriMulWeights(*w), outgoing, eps, hidden_chunk, add_into_z=False),
        lambda z, *w: triangle_multiplicative_update_torch(z, mask, TriMulWeights(*w), outgoing, eps, chunk_size),
        z, *w,
    )  # fmt: skip


# Lets the trunk ask for the in-place form (TriangleMultiplicativeUpdate.add_to_).
triangle_multiplicative_update.supports_add_into_z = True


def _trimul_kernels(z, mask, w, outgoing, eps, hidden_chunk, add_into_z):
    """The three launches of :func:`triangle_multiplicative_update` (inputs already checked): the update,
    or with ``add_into_z`` z updated in place."""
    B, L, c_z, c_h = _check_inputs(z, mask, w)
    dt = z.dtype
    zc = z.contiguous()  # with add_into_z the kernels update zc, copied back into z if it is not z
    wt = TriMulWeights(*(t.to(dt).contiguous() for t in w))
    x_dtype = torch.float32 if dt == torch.float16 else dt  # x overflows fp16 before LN_out
    if add_into_z:
        out = zc
        x = torch.empty((B, L, L, c_h), dtype=x_dtype, device=z.device)  # the one pair-sized buffer
    else:
        out = torch.empty((B, L, L, c_z), dtype=dt, device=z.device)
        x = out if (c_h == c_z and x_dtype == dt) else torch.empty((B, L, L, c_h), dtype=x_dtype, device=z.device)
    if B and L:
        n_chunk = _hidden_chunk(c_h, hidden_chunk, add_into_z)
        _trimul_launches(zc, mask, wt, w, x, out, outgoing, eps, n_chunk, add_into_z)
    if not add_into_z:
        return out
    if zc is not z:
        z.copy_(zc)
    return z


def _trimul_launches(z, mask, wt, w, x, out, outgoing, eps, n_chunk, add_z):
    """Project and product per chunk of ``n_chunk`` hidden channels (a, b [B, n_chunk, L, L]) into x,
    then the output kernel into ``out`` (z itself when ``add_z``). z contiguous, wt in z's dtype."""
    B, L, _, c_z = z.shape
    c_h = x.shape[-1]
    dt = z.dtype
    LL = L * L
    prec = dot_precision(dt)
    upcast = dot_upcast(dt)
    blk = _blocks(dt, prec, launch_arch(z.device), c_z)
    maskf = mask.to(torch.float32).contiguous() if mask is not None else z
    a = torch.empty((B, n_chunk, L, L), dtype=dt, device=z.device)
    b = torch.empty_like(a)
    if outgoing:  # x_c = a_c @ b_c^T
        a_strides, b_strides = (L, 1), (1, L)
    else:  # x_c = a_c^T @ b_c
        a_strides, b_strides = (1, L), (L, 1)
    for h0 in range(0, c_h, n_chunk):
        n = min(n_chunk, c_h - h0)
        project_args = (
            z, maskf, wt.ln_in_weight, wt.ln_in_bias,
            wt.a_p_weight, wt.a_p_bias, wt.a_g_weight, wt.a_g_bias,
            wt.b_p_weight, wt.b_p_bias, wt.b_g_weight, wt.b_g_bias,
            a, b, LL, h0, n, n_chunk * LL, eps,
        )  # fmt: skip
        _launch(
            "trimul_project", _trimul_project_kernel, lambda cfg: (triton.cdiv(LL, cfg["BLOCK_P"]), B),
            project_args, _project_launch(blk, c_z, c_h, mask is not None, prec, upcast),
        )  # fmt: skip
        _launch(
            "trimul_product", _trimul_product_kernel,
            lambda cfg: (n, triton.cdiv(L, cfg["BLOCK_M"]) * triton.cdiv(L, cfg["BLOCK_N"]), B),
            (a, b, x, L, n_chunk * LL, *a_strides, *b_strides, h0), _product_launch(blk, c_h, prec, upcast),
        )  # fmt: skip
    del a, b
    output_args = (
        x, z, wt.ln_in_weight, wt.ln_in_bias, w.ln_out_weight.to(torch.float32).contiguous(),
        w.ln_out_bias.to(torch.float32).contiguous(), wt.z_weight, wt.z_bias, wt.g_weight, wt.g_bias,
        out, LL, eps,
    )  # fmt: skip
    _launch(
        "trimul_output", _trimul_output_kernel, lambda cfg: (triton.cdiv(LL, cfg["BLOCK_P"]), B),
        output_args, _output_launch(blk, c_z, c_h, add_z, prec, upcast),
    )  # fmt: skip


def aot_configs(arch: int = 90, c_z: int = 128, c_h: int = 128) -> list[AOTConfig]:
    """Every triangle-multiplication kernel configuration ESMFold launches on sm_<arch> (c_z = c_hidden = 128).

    Per dtype and, for fp32, per dot precision (names ``..._fp32_ieee``, ``_fp32_tf32x3``,
    ``_fp32_tf32``): the projection kernel with and without a mask, the product kernel (its strides
    decide outgoing vs incoming, so one compile serves both) and the output kernel, returning the
    update or (``_add``) adding it into z.
    """
    configs = []
    for dt, tdt in TRITON_DTYPES.items():
        ptr = f"*{tdt}"
        xptr = "*fp32" if dt == torch.float16 else ptr
        for prec in aot_precisions(dt):
            blk = _blocks(dt, prec, arch, c_z)
            tag = f"{tdt}_{prec}" if dt == torch.float32 else tdt
            for has_mask in (False, True):
                signature = {
                    "Z": ptr, "Mask": "*fp32" if has_mask else ptr, "LnW": ptr, "LnB": ptr,
                    "Wap": ptr, "Bap": ptr, "Wag": ptr, "Bag": ptr,
                    "Wbp": ptr, "Bbp": ptr, "Wbg": ptr, "Bbg": ptr, "A": ptr, "Bout": ptr,
                    "LL": "i32", "h_start": "i32", "n_h": "i32", "stride_ab": "i32", "eps": "fp32",
                }  # fmt: skip
                launch = _project_launch(blk, c_z, c_h, has_mask, prec, False)
                name = f"trimul_project_{tag}{'_mask' if has_mask else ''}"
                configs.append(aot_config(name, _trimul_project_kernel, signature, launch, uses_dot=True))
            signature = {
                "A": ptr, "Bm": ptr, "X": xptr, "L": "i32", "stride_ab": "i32",
                "stride_am": "i32", "stride_ak": "i32", "stride_bk": "i32", "stride_bn": "i32", "h_start": "i32",
            }  # fmt: skip
            launch = _product_launch(blk, c_h, prec, False)
            name = f"trimul_product_{tag}"
            configs.append(aot_config(name, _trimul_product_kernel, signature, launch, uses_dot=True))
            signature = {
                "X": xptr, "Z": ptr, "LnInW": ptr, "LnInB": ptr, "LnOutW": "*fp32", "LnOutB": "*fp32",
                "Wz": ptr, "Bz": ptr, "Wg": ptr, "Bg": ptr, "Out": ptr, "LL": "i32", "eps": "fp32",
            }  # fmt: skip
            for add_z in (False, True):
                launch = _output_launch(blk, c_z, c_h, add_z, prec, False)
                name = f"trimul_output_{tag}{'_add' if add_z else ''}"
                configs.append(aot_config(name, _trimul_output_kernel, signature, launch, uses_dot=True))
    return configs


__all__ = [
    "TriMulWeights",
    "triangle_multiplicative_update",
    "triangle_multiplicative_update_reference",
    "triangle_multiplicative_update_torch",
    "aot_configs",
]
