"""ESM-2 self-attention core: rotary position embedding + softmax attention, fused.

ESM-2 scales the queries by ``D**-0.5``, rotates queries and keys with the rotate-halves (GPT-NeoX)
rotary embedding and masks padding keys with ``-inf`` before a softmax over keys (fair-esm
``esm/multihead_attention.py``, ``esm/rotary_embedding.py``). Here that whole core is one op:

* :func:`rotary_attention` - Triton flash-attention kernel; the rotary is applied to the query tile
  once and to every key tile as it streams past, so rotated q/k are never written to memory and the
  ``[L, L]`` logits of a head are never materialised (online softmax, fp32 statistics). Under
  autograd its backward is fused too (FlashAttention-2 style: probabilities recomputed from the saved
  log-sum-exp, the rotary applied in the kernel and its transpose applied to dq and dk).
* :func:`rotary_attention_reference` - naive PyTorch mirroring fair-esm (the oracle).
* :func:`rotary_attention_torch` - rotary into ``[B, H, L, D]`` buffers, then
  ``F.scaled_dot_product_attention`` (the ``torch`` backend); out of place under autograd.

All three take ``q, k, v: [B, L, H, D]`` (any strides with a unit last-dim stride for the kernel),
``cos, sin: [L, D]`` (fp32), ``key_padding_mask: [B, L]`` bool with True = padding key, and return
``[B, L, H, D]`` in ``q``'s dtype. A query whose keys are ALL padding gets NaN, as in fair-esm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .utils import (
    LOG2E, TRITON_DTYPES, AOTConfig, aot_config, aot_precisions, attention_launch, attention_operands, dot,
    dot_block, dot_precision, launch_arch, launch_with_fallback, records_grad, require_triton, tl, triton,
)  # fmt: skip

__all__ = [
    "rotary_attention",
    "rotary_attention_reference",
    "rotary_attention_torch",
    "aot_configs",
]

_HEAD_DIMS = (16, 24, 32, 64, 128)


def _check_inputs(q, k, v, cos, sin, key_padding_mask) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share one [B, L, H, D] shape; got {q.shape}, {k.shape}, {v.shape}")
    B, L, H, D = q.shape
    if D % 2:
        raise ValueError(f"rotary needs an even head dim; got D={D}")
    if cos.shape != (L, D) or sin.shape != (L, D):
        raise ValueError(f"cos/sin must be [L, D] = [{L}, {D}]; got {tuple(cos.shape)}, {tuple(sin.shape)}")
    if key_padding_mask is not None and key_padding_mask.shape != (B, L):
        raise ValueError(f"key_padding_mask must be [B, L] = [{B}, {L}]; got {tuple(key_padding_mask.shape)}")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``cat(-x2, x1)`` over the last dim (rotate-halves / NeoX layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


# --------------------------------------------------------------------------------------------
# reference: the oracle
# --------------------------------------------------------------------------------------------


def rotary_attention_reference(q, k, v, cos, sin, key_padding_mask=None, scale=None, return_weights=False):
    """Naive ESM-2 attention core, step by step as fair-esm's ``MultiheadAttention`` does it.

    q, k, v: [B, L, H, D]; cos, sin: [L, D]; key_padding_mask: [B, L] bool (True = padding) or None.
    The tables are cast to q's dtype, q is scaled before the rotation, matmuls run in the input dtype
    and the softmax over keys in (at least) fp32 (fp64 for fp64 input). Returns [B, L, H, D] in q's
    dtype; with ``return_weights`` the pair ``(out, probs)``, probs [B, H, L(query), L(key)] being
    that softmax rounded to q's dtype (``out`` is the same either way; padding keys get probability
    0, and a query whose keys are all padding gets NaN in both). Differentiable.
    """
    _check_inputs(q, k, v, cos, sin, key_padding_mask)
    D = q.shape[-1]
    scale = D**-0.5 if scale is None else scale
    cos_, sin_ = cos.to(q.dtype), sin.to(q.dtype)  # fair-esm keeps its tables in the activation dtype
    qh = q.transpose(1, 2) * scale  # [B, H, L, D]
    kh = k.transpose(1, 2)  # [B, H, L, D]
    qh = qh * cos_ + _rotate_half(qh) * sin_
    kh = kh * cos_ + _rotate_half(kh) * sin_
    logits = qh @ kh.transpose(-1, -2)  # [B, H, L, L]
    if key_padding_mask is not None:
        logits = logits.masked_fill(key_padding_mask[:, None, None, :].bool(), float("-inf"))
    probs = torch.softmax(logits, dim=-1, dtype=torch.promote_types(q.dtype, torch.float32))
    out = (probs.to(v.dtype) @ v.transpose(1, 2)).transpose(1, 2).to(q.dtype)  # [B, L, H, D]
    return (out, probs.to(q.dtype)) if return_weights else out


# --------------------------------------------------------------------------------------------
# torch: the fast CPU path
# --------------------------------------------------------------------------------------------


def _qk_pair(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q and k as one [2, B, L, H, D] tensor: a free view when they are equally strided slices of
    one buffer (the fused qkv projection's output), else a stacked copy."""
    if (
        q.dtype == k.dtype
        and q.device == k.device
        and q.stride() == k.stride()
        and k.storage_offset() > q.storage_offset()
        and q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr()
    ):
        return q.as_strided((2, *q.shape), (k.storage_offset() - q.storage_offset(), *q.stride()))
    return torch.stack((q, k))


def _rotary_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate q and k ([B, L, H, D]) together into one fresh contiguous [2, B, L, H, D] buffer.

    Three elementwise passes in all (few ops matter on CPU: every op pays a thread-pool
    synchronisation): out = x*cos, then out1 -= x2*sin1 and out2 += x1*sin2 on the halves, which is
    x*cos + rotate_half(x)*sin without building rotate_half(x). fp32 tables: half inputs are
    multiplied in fp32 and rounded on each store.
    """
    pair = _qk_pair(q, k)  # [2, B, L, H, D]
    h = q.shape[-1] // 2
    out = torch.empty(pair.shape, dtype=q.dtype, device=q.device)  # [2, B, L, H, D]
    cos, sin = cos[:, None], sin[:, None]  # [L, 1, D]: broadcast over (2, B) and the heads
    torch.mul(pair, cos, out=out)
    out[..., :h].addcmul_(pair[..., h:], sin[..., :h], value=-1.0)
    out[..., h:].addcmul_(pair[..., :h], sin[..., h:])
    return out


def rotary_attention_torch(q, k, v, cos, sin, key_padding_mask=None, scale=None):
    """Rotary, then ``F.scaled_dot_product_attention`` (fused softmax, no [L, L] copy on CPU).

    Same signature and semantics as :func:`rotary_attention`. Returns [B, L, H, D]: the rotated
    q and k are [B, H, L, D] views of [B, L, H, D] buffers, and SDPA's output takes the query's
    layout, so on CPU the result is contiguous and the caller's head merge costs no copy.
    Differentiable (in q, k, v, cos, sin) whenever grad is enabled and an input requires grad.
    """
    _check_inputs(q, k, v, cos, sin, key_padding_mask)
    D = q.shape[-1]
    scale = D**-0.5 if scale is None else scale
    cos = cos.to(device=q.device, dtype=torch.float32)
    sin = sin.to(device=q.device, dtype=torch.float32)
    if records_grad(q, k, v, cos, sin):
        # Under autograd the out-of-place rotary (``_rotary_qk`` writes into buffers, which autograd
        # cannot differentiate): fp32 tables, rounded to q's dtype once.
        cos_, sin_ = cos[:, None], sin[:, None]  # [L, 1, D]
        qr, kr = ((x * cos_ + _rotate_half(x) * sin_).to(q.dtype).transpose(1, 2) for x in (q, k))
    else:
        qr, kr = _rotary_qk(q, k, cos, sin).transpose(2, 3).unbind(0)  # [B, H, L, D] views
    attn_mask = None
    if key_padding_mask is not None:
        attn_mask = ~key_padding_mask.bool()[:, None, None, :]  # [B, 1, 1, L], True = attend
    out = F.scaled_dot_product_attention(qr, kr, v.transpose(1, 2), attn_mask=attn_mask, scale=scale)
    return out.transpose(1, 2)  # [B, L, H, D]


# --------------------------------------------------------------------------------------------
# Triton kernel
# --------------------------------------------------------------------------------------------


@triton.jit
def _rotary_halves(x_ptr, rows, row_stride, dh, h_ok, row_ok, cos_ptr, sin_ptr, D, HALF):
    """Rows ``rows`` of one head, rotated, as two fp32 halves [rows, BLOCK_H]:

    x*cos + rotate_half(x)*sin  ==  (x1*cos1 - x2*sin1, x2*cos2 + x1*sin2)

    Splitting the halves loads every element once (no partner reload) and lets q.k be two
    K = D/2 dots, so the rotated tile is never shuffled across the head dim.
    """
    ok = row_ok[:, None] & h_ok[None, :]
    lo = rows[:, None] * row_stride + dh[None, :]
    tab = rows[:, None] * D + dh[None, :]
    x1 = tl.load(x_ptr + lo, mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + lo + HALF, mask=ok, other=0.0).to(tl.float32)
    r1 = x1 * tl.load(cos_ptr + tab, mask=ok, other=0.0) - x2 * tl.load(sin_ptr + tab, mask=ok, other=0.0)
    c2 = tl.load(cos_ptr + tab + HALF, mask=ok, other=0.0)
    r2 = x2 * c2 + x1 * tl.load(sin_ptr + tab + HALF, mask=ok, other=0.0)
    return r1, r2


@triton.jit
def _rotary_attention_fwd(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, mask_ptr, out_ptr, lse_ptr,
    stride_qb, stride_ql, stride_qh,
    stride_kb, stride_kl, stride_kh,
    stride_vb, stride_vl, stride_vh,
    stride_mb,
    stride_ob, stride_ol, stride_oh,
    L, H, D, qk_scale,
    HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    STORE_LSE: tl.constexpr = False,
):
    """One program = one block of BLOCK_M queries of one (batch, head); keys stream in BLOCK_N tiles.

    BLOCK_H (>= D/2) tiles each rotary half, BLOCK_D (>= D) the values; both are padded powers of two.

    ``qk_scale`` = scale * log2(e): folded into the rotated queries so the softmax uses exp2.
    ``STORE_LSE`` (under autograd): also store each query's log2-sum-exp2 of its logits, fp32
    [B, H, L] at ``lse_ptr``, from which the backward recomputes the probabilities.
    """
    # Flat 1-D grid, query tiles fastest: the programs reading one head's keys run together.
    pid = tl.program_id(0)
    num_m = tl.cdiv(L, BLOCK_M)
    pid_m = pid % num_m
    pid_bh = pid // num_m
    b = pid_bh // H
    h = pid_bh % H
    b64 = b.to(tl.int64)  # B*L*H*D can pass 2^31 for long batches

    q_base = q_ptr + b64 * stride_qb + h * stride_qh
    k_base = k_ptr + b64 * stride_kb + h * stride_kh
    v_base = v_ptr + b64 * stride_vb + h * stride_vh

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    d = tl.arange(0, BLOCK_D)  # [BLOCK_D], padded past D for D = 24
    d_ok = d < D
    half = D // 2
    dh = tl.arange(0, BLOCK_H)  # [BLOCK_H], one rotary half
    h_ok = dh < half
    m_ok = offs_m < L

    q1, q2 = _rotary_halves(q_base, offs_m, stride_ql, dh, h_ok, m_ok, cos_ptr, sin_ptr, D, half)
    q1 = (q1 * qk_scale).to(q_ptr.dtype.element_ty)  # [BLOCK_M, BLOCK_H]
    q2 = (q2 * qk_scale).to(q_ptr.dtype.element_ty)  # [BLOCK_M, BLOCK_H]

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    for start_n in range(0, L, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)  # [BLOCK_N]
        n_ok = offs_n < L
        k1, k2 = _rotary_halves(k_base, offs_n, stride_kl, dh, h_ok, n_ok, cos_ptr, sin_ptr, D, half)
        s = dot(q1, tl.trans(k1.to(k_ptr.dtype.element_ty)), None, DOT_PRECISION, UPCAST_DOT)
        # [BLOCK_M, BLOCK_N] logits in log2 units
        s += dot(q2, tl.trans(k2.to(k_ptr.dtype.element_ty)), None, DOT_PRECISION, UPCAST_DOT)
        keep = n_ok
        if HAS_MASK:
            pad = tl.load(mask_ptr + b64 * stride_mb + offs_n, mask=n_ok, other=1)
            keep = keep & (pad == 0)
        s = tl.where(keep[None, :], s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # A query whose keys so far are all padding has m_new = -inf; subtract 0 instead (no NaN).
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])  # [BLOCK_M, BLOCK_N]
        l_i = l_i * alpha + tl.sum(p, axis=1)
        vt = tl.load(
            v_base + offs_n[:, None] * stride_vl + d[None, :],
            mask=n_ok[:, None] & d_ok[None, :],
            other=0.0,
        )  # [BLOCK_N, BLOCK_D]
        acc = acc * alpha[:, None] + dot(p.to(vt.dtype), vt, None, DOT_PRECISION, UPCAST_DOT)
        m_i = m_new

    out = acc / l_i[:, None]  # all-padding queries: 0/0 = NaN, as fair-esm's softmax gives
    o_ptrs = out_ptr + b64 * stride_ob + h * stride_oh + offs_m[:, None] * stride_ol + d[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    if STORE_LSE:
        tl.store(lse_ptr + pid_bh.to(tl.int64) * L + offs_m, m_i + tl.log2(l_i), mask=m_ok)


@triton.jit
def _scaled_rotary_halves(x_ptr, rows, row_stride, dh, h_ok, row_ok, cos_ptr, sin_ptr, D, HALF, qk_scale):
    """The two rotated halves times ``qk_scale``, rounded to the input dtype, as the forward's dots
    read them (the forward rounds only the queries; keys pass qk_scale = 1)."""
    r1, r2 = _rotary_halves(x_ptr, rows, row_stride, dh, h_ok, row_ok, cos_ptr, sin_ptr, D, HALF)
    return (r1 * qk_scale).to(x_ptr.dtype.element_ty), (r2 * qk_scale).to(x_ptr.dtype.element_ty)


@triton.jit
def _bwd_key_tile(k_base, v_base, mask_row, offs_n, n_ok, stride_kl, stride_vl, dh, h_ok, d, d_ok,
                  cos_ptr, sin_ptr, D, HALF, HAS_MASK: tl.constexpr):  # fmt: skip
    """What the backward reads of BLOCK_N keys: rotated halves (input dtype), values [BLOCK_N, BLOCK_D]
    and which keys are real (in range and, with a mask, not padding)."""
    kc1, kc2 = _scaled_rotary_halves(k_base, offs_n, stride_kl, dh, h_ok, n_ok, cos_ptr, sin_ptr, D, HALF, 1.0)
    keep = n_ok
    if HAS_MASK:
        keep = keep & (tl.load(mask_row + offs_n, mask=n_ok, other=1) == 0)
    vt = tl.load(v_base + offs_n[:, None] * stride_vl + d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    return kc1, kc2, vt, keep


@triton.jit
def _bwd_query_tile(q_base, do_base, lse_base, delta_base, offs_m, m_ok, stride_ql, stride_gl, dh, h_ok, d, d_ok,
                    cos_ptr, sin_ptr, D, HALF, qk_scale):  # fmt: skip
    """What the backward reads of BLOCK_M queries: rotated halves times qk_scale (input dtype, as the
    forward's), dO [BLOCK_M, BLOCK_D], the saved log2-sum-exp2 and delta = rowsum(dO * O)."""
    qs1, qs2 = _scaled_rotary_halves(q_base, offs_m, stride_ql, dh, h_ok, m_ok, cos_ptr, sin_ptr, D, HALF, qk_scale)
    do = tl.load(do_base + offs_m[:, None] * stride_gl + d[None, :], mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    lse = tl.load(lse_base + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(delta_base + offs_m, mask=m_ok, other=0.0)
    return qs1, qs2, do, lse, delta


@triton.jit
def _probs(qs1, qs2, kc1, kc2, lse, keep, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """One [BLOCK_M, BLOCK_N] tile of the probabilities, recomputed from the saved log2-sum-exp2
    exactly as the forward's logits; ``keep`` masks invalid queries and keys (probability 0)."""
    s = dot(qs1, tl.trans(kc1), None, DOT_PRECISION, UPCAST_DOT)
    s += dot(qs2, tl.trans(kc2), None, DOT_PRECISION, UPCAST_DOT)
    return tl.where(keep, tl.exp2(s - lse[:, None]), 0.0)


@triton.jit
def _dlogits(p, vt, do, delta, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """dS = P * (dO V^T - delta), the gradient of the (natural-unit) logits, [BLOCK_M, BLOCK_N]."""
    dp = dot(do, tl.trans(vt), None, DOT_PRECISION, UPCAST_DOT)
    return p * (dp - delta[:, None])


@triton.jit
def _store_unrotated(ptr, rows, row_stride, dh, h_ok, row_ok, cos_ptr, sin_ptr, D, HALF, g1, g2):
    """Store R^T g: the gradient of the input halves from that of the rotated halves (g1, g2),
    the transpose of :func:`_rotary_halves` (x1' = g1*cos1 + g2*sin2, x2' = g2*cos2 - g1*sin1)."""
    ok = row_ok[:, None] & h_ok[None, :]
    lo = rows[:, None] * row_stride + dh[None, :]
    tab = rows[:, None] * D + dh[None, :]
    c1 = tl.load(cos_ptr + tab, mask=ok, other=0.0)
    s1 = tl.load(sin_ptr + tab, mask=ok, other=0.0)
    c2 = tl.load(cos_ptr + tab + HALF, mask=ok, other=0.0)
    s2 = tl.load(sin_ptr + tab + HALF, mask=ok, other=0.0)
    tl.store(ptr + lo, (g1 * c1 + g2 * s2).to(ptr.dtype.element_ty), mask=ok)
    tl.store(ptr + lo + HALF, (g2 * c2 - g1 * s1).to(ptr.dtype.element_ty), mask=ok)


@triton.jit
def _rotary_attention_bwd(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, mask_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_ql, stride_qh,
    stride_kb, stride_kl, stride_kh,
    stride_vb, stride_vl, stride_vh,
    stride_mb,
    stride_gb, stride_gl, stride_gh,
    L, H, D, qk_scale, scale,
    HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    DQ: tl.constexpr,
    SPLIT_DKDV: tl.constexpr = False,
):
    """FlashAttention-2 backward with the rotary inside, one kernel body for two launches.

    ``DQ=False``: one program = BLOCK_N keys of one (batch, head); query tiles stream past and it
    accumulates dV = P^T dO and d(rot k) = dS^T (scale * rot q). ``DQ=True``: one program = BLOCK_M
    queries; key tiles stream past and it accumulates d(rot q) = scale * dS (rot k). P is recomputed
    from the forward's log2-sum-exp2 (``lse_ptr``), delta = rowsum(dO * O) (``delta_ptr``, both fp32
    [B, H, L]); the rotated gradients are rotated back (R^T) on the store. dO, dq, dk, dv share the
    ``stride_g*`` strides. ``SPLIT_DKDV`` (with ``DQ=False``): two programs per key tile, one
    accumulating dV and one dK (see :func:`_bwd_dkdv_tile`); the grid doubles.
    """
    pid = tl.program_id(0)
    num_t = tl.cdiv(L, BLOCK_M if DQ else BLOCK_N) * (2 if SPLIT_DKDV else 1)
    pid_t = pid % num_t
    pid_bh = pid // num_t
    b = pid_bh // H
    h = pid_bh % H
    b64 = b.to(tl.int64)
    q_base = q_ptr + b64 * stride_qb + h * stride_qh
    k_base = k_ptr + b64 * stride_kb + h * stride_kh
    v_base = v_ptr + b64 * stride_vb + h * stride_vh
    g_off = b64 * stride_gb + h * stride_gh
    do_base = do_ptr + g_off
    lse_base = lse_ptr + pid_bh.to(tl.int64) * L
    delta_base = delta_ptr + pid_bh.to(tl.int64) * L
    mask_row = mask_ptr + b64 * stride_mb  # (q_ptr, never read, without a mask)

    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    half = D // 2
    dh = tl.arange(0, BLOCK_H)
    h_ok = dh < half
    dtype = q_ptr.dtype.element_ty

    if DQ:
        offs_m = pid_t * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
        m_ok = offs_m < L
        qs1, qs2, do, lse, delta = _bwd_query_tile(q_base, do_base, lse_base, delta_base, offs_m, m_ok, stride_ql,
                                                   stride_gl, dh, h_ok, d, d_ok, cos_ptr, sin_ptr, D, half, qk_scale)
        g1 = tl.zeros([BLOCK_M, BLOCK_H], tl.float32)
        g2 = tl.zeros([BLOCK_M, BLOCK_H], tl.float32)
        for start_n in range(0, L, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            kc1, kc2, vt, keep = _bwd_key_tile(k_base, v_base, mask_row, offs_n, offs_n < L, stride_kl, stride_vl,
                                               dh, h_ok, d, d_ok, cos_ptr, sin_ptr, D, half, HAS_MASK)
            p = _probs(qs1, qs2, kc1, kc2, lse, m_ok[:, None] & keep[None, :], DOT_PRECISION, UPCAST_DOT)
            ds = _dlogits(p, vt, do, delta, DOT_PRECISION, UPCAST_DOT)
            g1 = dot(ds.to(dtype), kc1, g1, DOT_PRECISION, UPCAST_DOT)
            g2 = dot(ds.to(dtype), kc2, g2, DOT_PRECISION, UPCAST_DOT)
        _store_unrotated(dq_ptr + g_off, offs_m, stride_gl, dh, h_ok, m_ok, cos_ptr, sin_ptr, D, half,
                         g1 * scale, g2 * scale)
    elif SPLIT_DKDV:  # two programs per key tile: even ones accumulate dV, odd ones dK
        if pid_t % 2 == 0:
            _bwd_dkdv_tile(q_base, k_base, v_base, do_base, lse_base, delta_base, mask_row, dk_ptr + g_off,
                           dv_ptr + g_off, pid_t // 2, stride_ql, stride_kl, stride_vl, stride_gl, L, D, half,
                           qk_scale, cos_ptr, sin_ptr, d, d_ok, dh, h_ok, HAS_MASK, BLOCK_M, BLOCK_N, BLOCK_D,
                           BLOCK_H, DOT_PRECISION, UPCAST_DOT, True, False)  # fmt: skip
        else:
            _bwd_dkdv_tile(q_base, k_base, v_base, do_base, lse_base, delta_base, mask_row, dk_ptr + g_off,
                           dv_ptr + g_off, pid_t // 2, stride_ql, stride_kl, stride_vl, stride_gl, L, D, half,
                           qk_scale, cos_ptr, sin_ptr, d, d_ok, dh, h_ok, HAS_MASK, BLOCK_M, BLOCK_N, BLOCK_D,
                           BLOCK_H, DOT_PRECISION, UPCAST_DOT, False, True)  # fmt: skip
    else:
        _bwd_dkdv_tile(q_base, k_base, v_base, do_base, lse_base, delta_base, mask_row, dk_ptr + g_off,
                       dv_ptr + g_off, pid_t, stride_ql, stride_kl, stride_vl, stride_gl, L, D, half,
                       qk_scale, cos_ptr, sin_ptr, d, d_ok, dh, h_ok, HAS_MASK, BLOCK_M, BLOCK_N, BLOCK_D,
                       BLOCK_H, DOT_PRECISION, UPCAST_DOT, True, True)  # fmt: skip


@triton.jit
def _bwd_dkdv_tile(q_base, k_base, v_base, do_base, lse_base, delta_base, mask_row, dk_base, dv_base, tile,
                   stride_ql, stride_kl, stride_vl, stride_gl, L, D, half, qk_scale, cos_ptr, sin_ptr,
                   d, d_ok, dh, h_ok, HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, DOT_PRECISION: tl.constexpr,
                   UPCAST_DOT: tl.constexpr, WANT_DV: tl.constexpr, WANT_DK: tl.constexpr):  # fmt: skip
    """dV = P^T dO (``WANT_DV``) and/or dK = R^T (dS^T (scale * rot q)) (``WANT_DK``) of BLOCK_N keys,
    query tiles streaming past. One program computing only one of them holds one accumulator and
    skips dO V^T (dV needs only P): what lets D = 128 tiles fit in registers."""
    dtype = k_base.dtype.element_ty
    offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    n_ok = offs_n < L
    kc1, kc2, vt, keep = _bwd_key_tile(k_base, v_base, mask_row, offs_n, n_ok, stride_kl, stride_vl,
                                       dh, h_ok, d, d_ok, cos_ptr, sin_ptr, D, half, HAS_MASK)  # fmt: skip
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    g1 = tl.zeros([BLOCK_N, BLOCK_H], tl.float32)
    g2 = tl.zeros([BLOCK_N, BLOCK_H], tl.float32)
    for start_m in range(0, L, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_ok = offs_m < L
        qs1, qs2, do, lse, delta = _bwd_query_tile(q_base, do_base, lse_base, delta_base, offs_m, m_ok,
                                                   stride_ql, stride_gl, dh, h_ok, d, d_ok, cos_ptr, sin_ptr,
                                                   D, half, qk_scale)  # fmt: skip
        p = _probs(qs1, qs2, kc1, kc2, lse, m_ok[:, None] & keep[None, :], DOT_PRECISION, UPCAST_DOT)
        if WANT_DK:  # dS before the dV dot: this order keeps sm_80's D = 64 tiles from spilling
            dst = tl.trans(_dlogits(p, vt, do, delta, DOT_PRECISION, UPCAST_DOT).to(dtype))  # [BLOCK_N, BLOCK_M]
        if WANT_DV:
            dv = dot(tl.trans(p.to(dtype)), do, dv, DOT_PRECISION, UPCAST_DOT)
        if WANT_DK:
            g1 = dot(dst, qs1, g1, DOT_PRECISION, UPCAST_DOT)  # qs carries scale * log2(e)
            g2 = dot(dst, qs2, g2, DOT_PRECISION, UPCAST_DOT)
    if WANT_DV:
        tl.store(dv_base + offs_n[:, None] * stride_gl + d[None, :], dv.to(dtype), mask=n_ok[:, None] & d_ok[None, :])
    if WANT_DK:
        inv = 1.0 / 1.4426950408889634
        _store_unrotated(dk_base, offs_n, stride_gl, dh, h_ok, n_ok, cos_ptr, sin_ptr, D, half, g1 * inv, g2 * inv)


def _blocks(D: int) -> dict:
    """Padded power-of-two widths of the value tile and of one rotary half (tl.dot needs >= 16)."""
    return dict(BLOCK_D=dot_block(D), BLOCK_H=dot_block(D // 2))


# What the interpreter launches: small tiles, so short test sequences loop over several of them.
_INTERPRETER_TILES = dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)

# The four launches of the op: the forward without and with the stored log2-sum-exp2 (autograd), and
# the backward's dk/dv and dq launches.
_KINDS = ("fwd", "fwd_lse", "bwd_dkdv", "bwd_dq")
# The mask settings each kind is launched with: the dq backward never takes the mask (see backward).
_MASKED = {"fwd": (False, True), "fwd_lse": (False, True), "bwd_dkdv": (False, True), "bwd_dq": (False,)}


def _cuda_tiles(D: int, dtype: torch.dtype, arch: int, precision: str) -> dict:
    """Tile sizes, warps and stages of the CUDA forward on sm_<arch> for one head dim, dtype and dot
    precision (``precision``: see :func:`~fastfold_kernels.utils.dot_precision`).

    Chosen from sm_90 and sm_80 AOT compiles under triton 3.6 and 3.9 (profiling/compile_report.py):
    the largest tiles without register spills.
    """
    blocks = _blocks(D)
    if dtype == torch.float32 and precision == "ieee":
        # ieee fp32 dots run on FMA units and hold whole tiles in registers: small tiles.
        return dict(BLOCK_M=32, BLOCK_N=32, num_warps=8 if D > 64 else 4, num_stages=1, **blocks)
    if dtype == torch.float32:
        # tf32 / 3xtf32 on tensor cores: 64 query rows (one wgmma on sm_90); fp32 operands take twice
        # the registers of half ones, so 32-key tiles, and 8 warps at D = 128. 3xtf32 splits every
        # operand into high and low parts: 16-key tiles, and on sm_80 32 query rows at D = 128.
        x3 = precision == "tf32x3"
        block_m = 32 if x3 and arch < 90 and D > 64 else 64
        return dict(BLOCK_M=block_m, BLOCK_N=16 if x3 else 32, num_warps=8 if D > 64 else 4, num_stages=1, **blocks)
    if arch < 90:
        # sm_80's mma.sync operands and the fp32 rotary halves share the register file: at D = 128
        # 16-key tiles, and one stage fewer for the smallest heads, keep them from spilling.
        if D > 64:
            return dict(BLOCK_M=128, BLOCK_N=16, num_warps=8, num_stages=2, **blocks)
        return dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2 if D <= 16 else 3, **blocks)
    if D > 64:
        return dict(BLOCK_M=128, BLOCK_N=32, num_warps=8, num_stages=2, **blocks)
    return dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, **blocks)


def _cuda_bwd_tiles(D: int, dtype: torch.dtype, arch: int, precision: str, dq: bool) -> dict:
    """Tiles of a backward launch on sm_<arch>: ``dq`` (each program holds BLOCK_M queries, key tiles
    stream past) or dk/dv (each holds BLOCK_N keys, query tiles stream past). The backward keeps
    q, k, v, dO and two or three accumulators live, so tiles are smaller than the forward's; where
    even small tiles spill, dk/dv is split over two programs per key tile (``SPLIT_DKDV``).
    Chosen from sm_90 and sm_80 AOT compiles under triton 3.6 and 3.9 (profiling/compile_report.py):
    the largest tiles without register spills, 64 rows held on sm_90 (its wgmma wants 64-row
    operands: with fewer it falls back to mma.sync)."""
    blocks = _blocks(D)
    if dtype == torch.float32 and (precision == "ieee" or D > 64):
        # fp32 at D = 128 (ESM-2 15B): every tensor-core tile tried spills on sm_90 (dq 64 x 16: 96-920 B,
        # dk/dv split: 256-280 B) and 3xTF32's dk/dv on sm_80 (16 B), so it runs full fp32 dots on FMA
        # units at every precision setting: slower than TF32, never less precise than asked.
        block = 32 if D <= 32 else 16
        warps = 8 if D > 64 and not dq else 4
        pinned = {} if precision == "ieee" else dict(DOT_PRECISION="ieee")
        return dict(BLOCK_M=block, BLOCK_N=block, num_warps=warps, num_stages=1, **blocks, **pinned)
    if dtype == torch.float32:
        return _tf32_bwd_tiles(D, arch, precision, dq, blocks)
    if arch < 90:
        if dq and D == 64:  # 32-query tiles at D = 64 spill kilobytes on sm_80
            return dict(BLOCK_M=16, BLOCK_N=32, num_warps=4, num_stages=1, **blocks)
        if dq and D > 64:  # 32 x 32 spills under triton 3.6
            return dict(BLOCK_M=32, BLOCK_N=16, num_warps=8, num_stages=1, **blocks)
        return dict(BLOCK_M=32, BLOCK_N=32, num_warps=4 if D <= 32 else 8, num_stages=1, **blocks)
    warps = 4 if D <= 32 else 8
    if dq:  # at D = 128 16-key tiles: 32-key ones spill under triton 3.6
        return dict(BLOCK_M=64, BLOCK_N=16 if D > 64 else 32, num_warps=warps, num_stages=1, **blocks)
    if D > 64:  # every unsplit 64-key tile spills at D = 128 (224 to 1850 bytes, 4 to 16 warps)
        return dict(BLOCK_M=32, BLOCK_N=64, num_warps=8, num_stages=1, SPLIT_DKDV=True, **blocks)
    return dict(BLOCK_M=32, BLOCK_N=64, num_warps=warps, num_stages=1, **blocks)


def _tf32_bwd_tiles(D: int, arch: int, precision: str, dq: bool, blocks: dict) -> dict:
    """Backward tiles of fp32 on tensor cores (tf32, 3xtf32, which splits every operand into high and
    low parts) for D <= 64: fp32 operands take twice the registers of half ones, so 16-row streamed
    tiles. sm_90 holds 64 rows (wgmma) and splits 3xtf32's dk/dv, which would spill; sm_80's mma.sync
    takes any rows."""
    if arch < 90:
        if precision == "tf32x3":
            return dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1, **blocks)
        if dq:  # 64 held queries spill at D = 64
            return dict(BLOCK_M=16 if D == 64 else 64, BLOCK_N=16, num_warps=4, num_stages=1, **blocks)
        return dict(BLOCK_M=16, BLOCK_N=32, num_warps=4, num_stages=1, **blocks)
    warps = 4 if D <= 32 else 8
    if dq:
        return dict(BLOCK_M=64, BLOCK_N=16, num_warps=warps, num_stages=1, **blocks)
    split = dict(SPLIT_DKDV=True) if precision == "tf32x3" else {}
    return dict(BLOCK_M=16, BLOCK_N=64, num_warps=warps, num_stages=1, **split, **blocks)


def _kind_tiles(kind: str, D: int, dtype: torch.dtype, precision: str, arch: int) -> dict:
    """The CUDA tiles of one launch kind (one of :data:`_KINDS`): what the launcher launches and
    what :func:`aot_configs` compiles, one function of (kind, D, dtype, dot precision, arch)."""
    if kind.startswith("fwd"):
        return _cuda_tiles(D, dtype, arch, precision)
    return _cuda_bwd_tiles(D, dtype, arch, precision, dq=kind == "bwd_dq")


def _smaller(tiles: dict) -> dict:
    """The next smaller configuration, tried once when a launch runs out of GPU resources: the larger
    of BLOCK_M / BLOCK_N halved (at least 16), one stage."""
    big = "BLOCK_M" if tiles["BLOCK_M"] >= tiles["BLOCK_N"] else "BLOCK_N"
    return {**tiles, big: max(16, tiles[big] // 2), "num_stages": 1}


def _launch_config(kind: str, D: int, dtype: torch.dtype, device: torch.device) -> dict:
    """The tiles of a launch of ``kind`` on ``device`` (see :func:`~fastfold_kernels.utils.launch_arch`):
    the CUDA tiles of its arch, or under the interpreter :data:`_INTERPRETER_TILES` (unless a test
    emulates an arch)."""
    arch = launch_arch(device)
    if arch is None:
        return dict(_INTERPRETER_TILES, **_blocks(D))
    return _kind_tiles(kind, D, dtype, dot_precision(dtype), arch)


def _rotary_attention_fwd_launch(q, k, v, cos, sin, key_padding_mask, scale, out, lse=None):
    """Checks, prepares and launches the forward; with ``lse`` ([B, H, L] fp32) it is stored too.
    Returns (q, k, v, cos, sin, mask, stride_mb, scale, out): what the backward relaunches with."""
    q, k, v, scale, out = attention_operands("rotary_attention", "[B, L, H, D]", q, k, v, scale, out)
    B, L, H, D = q.shape
    cos = cos.to(device=q.device, dtype=torch.float32).contiguous()
    sin = sin.to(device=q.device, dtype=torch.float32).contiguous()
    if key_padding_mask is not None:
        mask = key_padding_mask.to(device=q.device, dtype=torch.bool)
        mask = mask.contiguous().view(torch.uint8)  # [B, L]
        stride_mb = mask.stride(0)
    else:
        mask, stride_mb = q, 0  # never read: HAS_MASK is False
    prepared = (q, k, v, cos, sin, mask, stride_mb, scale, out)
    if B * L * H == 0:
        return prepared
    kind = "fwd" if lse is None else "fwd_lse"
    has_mask = key_padding_mask is not None

    def launch(tiles: dict) -> None:
        grid = (triton.cdiv(L, tiles["BLOCK_M"]) * B * H,)
        _rotary_attention_fwd[grid](
            q, k, v, cos, sin, mask, out, q if lse is None else lse,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            stride_mb,
            out.stride(0), out.stride(1), out.stride(2),
            L, H, D, scale * LOG2E.value,
            **attention_launch(tiles, has_mask, q.dtype),
            STORE_LSE=lse is not None,
        )  # fmt: skip

    cfg = _launch_config(kind, D, q.dtype, q.device)
    launch_with_fallback(f"rotary_attention {kind}", cfg, _smaller(cfg), launch)
    return prepared


class _RotaryAttentionFn(torch.autograd.Function):
    """:func:`rotary_attention` under autograd: the forward also stores the per-query
    log2-sum-exp2, the backward is :func:`_rotary_attention_bwd` (fused, FlashAttention-2 style)."""

    @staticmethod
    def forward(ctx, q, k, v, cos, sin, key_padding_mask, scale):
        B, L, H, _ = q.shape
        lse = torch.empty((B, H, L), dtype=torch.float32, device=q.device)
        q, k, v, cos, sin, mask, stride_mb, scale, out = _rotary_attention_fwd_launch(
            q, k, v, cos, sin, key_padding_mask, scale, None, lse
        )
        ctx.save_for_backward(q, k, v, cos, sin, mask, out, lse)
        ctx.stride_mb, ctx.scale, ctx.has_mask = stride_mb, scale, key_padding_mask is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # double backward: a clear error
    def backward(ctx, dout):
        q, k, v, cos, sin, mask, out, lse = ctx.saved_tensors
        B, L, H, D = q.shape
        do = dout.to(q.dtype).contiguous()  # [B, L, H, D]
        delta = (do.float() * out.float()).sum(-1).transpose(1, 2).contiguous()  # [B, H, L] fp32
        dq, dk, dv = (torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))
        if B * L * H:
            for kind in ("bwd_dkdv", "bwd_dq"):
                is_dq = kind == "bwd_dq"
                # dq needs no mask: a padding key's dS column multiplies only its own k row, so with those rows
                # zeroed the unmasked kernel gives the masked dq exactly (and no masked dq kernel is compiled:
                # at D = 128 in half precision it spills on sm_90 under triton 3.6).
                keys, has_mask = k, ctx.has_mask
                if is_dq and has_mask:
                    keys, has_mask = k.masked_fill(mask.view(torch.bool)[:, :, None, None], 0), False

                def launch(tiles: dict, is_dq: bool = is_dq, keys=keys, has_mask: bool = has_mask) -> None:
                    block = tiles["BLOCK_M"] if is_dq else tiles["BLOCK_N"]  # the tile each program holds
                    programs = triton.cdiv(L, block) * (2 if tiles.get("SPLIT_DKDV") else 1)
                    _rotary_attention_bwd[(programs * B * H,)](
                        q, keys, v, cos, sin, mask, do, lse, delta, dq, dk, dv,
                        q.stride(0), q.stride(1), q.stride(2),
                        keys.stride(0), keys.stride(1), keys.stride(2),
                        v.stride(0), v.stride(1), v.stride(2),
                        ctx.stride_mb,
                        do.stride(0), do.stride(1), do.stride(2),
                        L, H, D, ctx.scale * LOG2E.value, ctx.scale,
                        **attention_launch(tiles, has_mask, q.dtype), DQ=is_dq,
                    )  # fmt: skip

                cfg = _launch_config(kind, D, q.dtype, q.device)
                launch_with_fallback(f"rotary_attention {kind}", cfg, _smaller(cfg), launch)
        return dq, dk, dv, None, None, None, None


def rotary_attention(q, k, v, cos, sin, key_padding_mask=None, scale=None, out=None):
    """Fused rotary + softmax attention (ESM-2 self-attention core), Triton.

    Args:
        q, k, v: [B, L, H, D] fp16/bf16/fp32; any strides with unit stride on D (views of a fused
            projection are fine). D in {16, 24, 32, 64, 128} (any even D <= 128 works).
        cos, sin: [L, D] rotary tables, rotate-halves layout (fp32; converted if not).
        key_padding_mask: [B, L] bool, True = padding key, or None.
        scale: query scale, default D**-0.5.
        out: optional [B, L, H, D] buffer of q's dtype (unit stride on D) to write into; not allowed
            under autograd.
    Returns:
        [B, L, H, D] in q's dtype. fp32 inputs multiply at ``torch.get_float32_matmul_precision()``
        ("highest": full fp32, "high": 3xTF32, "medium": TF32; see
        :func:`~fastfold_kernels.utils.dot_precision`), read at each launch.

    Differentiable in q, k, v: with grad enabled and any of them requiring grad, the backward is a
    fused Triton kernel. cos, sin and the mask are constants (an error if cos/sin require grad).
    """
    require_triton()
    _check_inputs(q, k, v, cos, sin, key_padding_mask)
    if records_grad(q, k, v, cos, sin):
        if out is not None:
            raise RuntimeError(
                "rotary_attention (triton): out= cannot be used with autograd (inputs require grad); "
                "drop out= or run under torch.no_grad()"
            )
        if cos.requires_grad or sin.requires_grad:
            raise RuntimeError(
                "rotary_attention (triton): no gradient for the rotary tables cos/sin; pass them "
                "detached, or use the torch backend"
            )
        return _RotaryAttentionFn.apply(q, k, v, cos, sin, key_padding_mask, scale)
    return _rotary_attention_fwd_launch(q, k, v, cos, sin, key_padding_mask, scale, out)[-1]


def _aot_signature(tname: str, has_mask: bool, pointers: tuple, ints: tuple, floats: tuple) -> dict[str, str]:
    """An AOT signature: q/k/v-like pointers in the activation dtype, fp32 tables and statistics."""
    fp32_ptrs = {"cos_ptr", "sin_ptr", "lse_ptr", "delta_ptr"}
    signature = {p: "*fp32" if p in fp32_ptrs else f"*{tname}" for p in pointers}
    if has_mask:
        signature["mask_ptr"] = "*u8"
    signature.update({a: "i32" for a in ints})
    signature.update({a: "fp32" for a in floats})
    return signature


_STRIDES = (
    "stride_qb", "stride_ql", "stride_qh", "stride_kb", "stride_kl", "stride_kh",
    "stride_vb", "stride_vl", "stride_vh", "stride_mb",
)  # fmt: skip


def _precision_tag(dtype: torch.dtype, precision: str) -> str:
    """How a config name spells its dtype: fp32 ones with their dot precision (``fp32_tf32x3``)."""
    tname = TRITON_DTYPES[dtype]
    return f"{tname}_{precision}" if dtype == torch.float32 else tname


def _aot_launch(kind: str, tname: str, tiles: dict, has_mask: bool, dtype: torch.dtype, precision: str):
    """The kernel, AOT signature and launch keywords of one launch of ``kind``."""
    launch = attention_launch(tiles, has_mask, dtype, aot_precision=precision)
    if kind.startswith("fwd"):
        launch["STORE_LSE"] = kind == "fwd_lse"
        signature = _aot_signature(tname, has_mask, _FWD_PTRS, (*_STRIDES, *_OUT_STRIDES, *_SIZES), ("qk_scale",))
        if kind == "fwd":  # lse_ptr is q then, never read
            signature["lse_ptr"] = f"*{tname}"
        return _rotary_attention_fwd, signature, launch
    launch["DQ"] = kind == "bwd_dq"
    signature = _aot_signature(tname, has_mask, _BWD_PTRS, (*_STRIDES, *_GRAD_STRIDES, *_SIZES), ("qk_scale", "scale"))
    return _rotary_attention_bwd, signature, launch


_FWD_PTRS = ("q_ptr", "k_ptr", "v_ptr", "cos_ptr", "sin_ptr", "mask_ptr", "out_ptr", "lse_ptr")
_BWD_PTRS = ("q_ptr", "k_ptr", "v_ptr", "cos_ptr", "sin_ptr", "mask_ptr", "do_ptr", "lse_ptr", "delta_ptr",
             "dq_ptr", "dk_ptr", "dv_ptr")  # fmt: skip
_OUT_STRIDES = ("stride_ob", "stride_ol", "stride_oh")
_GRAD_STRIDES = ("stride_gb", "stride_gl", "stride_gh")
_SIZES = ("L", "H", "D")


def aot_configs(arch: int = 90) -> list[AOTConfig]:
    """Every distinct launch of :func:`rotary_attention` the ESM-2 models make on sm_<arch>.

    Head dims of all ESM-2 sizes x fp16 (ESMFold's LM) / bf16 / fp32 (under each dot precision
    ``torch.get_float32_matmul_precision()`` can select: ieee, tf32x3, tf32) x with and without
    padding mask. D is a runtime argument, so head dims with the same tiles (24 and 32: both pad to
    32) run one compiled kernel, listed once and named by the dims it serves. Under autograd the
    forward also stores the log2-sum-exp2 (``_lse``) and the backward launches twice (``bwd_dkdv``,
    ``bwd_dq``; dq always unmasked, its padding keys zeroed instead).
    """
    configs = []
    for dtype, tname in TRITON_DTYPES.items():
        for precision in aot_precisions(dtype):
            for kind in _KINDS:
                by_tiles: dict[tuple, tuple[dict, list[int]]] = {}
                for D in _HEAD_DIMS:
                    tiles = _kind_tiles(kind, D, dtype, precision, arch)
                    if tiles.get("DOT_PRECISION", precision) != precision:
                        continue  # pinned to another precision: that precision's config is the launch
                    by_tiles.setdefault(tuple(sorted(tiles.items())), (tiles, []))[1].append(D)
                for tiles, dims in by_tiles.values():
                    for has_mask in _MASKED[kind]:
                        fn, signature, launch = _aot_launch(kind, tname, tiles, has_mask, dtype, precision)
                        name = (f"rotary_attention_{kind}_{_precision_tag(dtype, precision)}"
                                f"_d{'-'.join(map(str, dims))}{'_mask' if has_mask else ''}")  # fmt: skip
                        configs.append(aot_config(name, fn, signature, launch, uses_dot=True))
    return configs
