"""ESM-2 self-attention core: rotary position embedding + softmax attention, fused.

ESM-2 scales the queries by ``D**-0.5``, rotates queries and keys with the rotate-halves (GPT-NeoX)
rotary embedding and masks padding keys with ``-inf`` before a softmax over keys (fair-esm
``esm/multihead_attention.py``, ``esm/rotary_embedding.py``). Here that whole core is one op:

* :func:`rotary_attention` - Triton flash-attention kernel; the rotary is applied to the query tile
  once and to every key tile as it streams past, so rotated q/k are never written to memory and the
  ``[L, L]`` logits of a head are never materialised (online softmax, fp32 statistics).
* :func:`rotary_attention_reference` - naive PyTorch mirroring fair-esm (the oracle).
* :func:`rotary_attention_torch` - rotary into ``[B, H, L, D]`` buffers, then
  ``F.scaled_dot_product_attention`` (the ``torch`` backend).

All three take ``q, k, v: [B, L, H, D]`` (any strides with a unit last-dim stride for the kernel),
``cos, sin: [L, D]`` (fp32), ``key_padding_mask: [B, L]`` bool with True = padding key, and return
``[B, L, H, D]`` in ``q``'s dtype. A query whose keys are ALL padding gets NaN, as in fair-esm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .utils import (
    LOG2E, TRITON_DTYPES, AOTConfig, aot_config, attention_launch, attention_operands, cuda_arch, dot,
    dot_block, interpreting, require_triton, tl, triton,
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
    """
    _check_inputs(q, k, v, cos, sin, key_padding_mask)
    D = q.shape[-1]
    scale = D**-0.5 if scale is None else scale
    cos = cos.to(device=q.device, dtype=torch.float32)
    sin = sin.to(device=q.device, dtype=torch.float32)
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
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, mask_ptr, out_ptr,
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
):
    """One program = one block of BLOCK_M queries of one (batch, head); keys stream in BLOCK_N tiles.

    BLOCK_H (>= D/2) tiles each rotary half, BLOCK_D (>= D) the values; both are padded powers of two.

    ``qk_scale`` = scale * log2(e): folded into the rotated queries so the softmax uses exp2.
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


def _blocks(D: int) -> dict:
    """Padded power-of-two widths of the value tile and of one rotary half (tl.dot needs >= 16)."""
    return dict(BLOCK_D=dot_block(D), BLOCK_H=dot_block(D // 2))


def _cuda_tiles(D: int, dtype: torch.dtype, arch: int = 90) -> dict:
    """Tile sizes, warps and stages of the CUDA launch on sm_<arch> for one head dim and dtype.

    Chosen from sm_90 and sm_80 AOT compiles (profiling/compile_report.py): the largest tiles
    without register spills.
    """
    blocks = _blocks(D)
    if dtype == torch.float32:
        # ieee fp32 dots run on FMA units and hold whole tiles in registers: small tiles.
        return dict(BLOCK_M=32, BLOCK_N=32, num_warps=8 if D > 64 else 4, num_stages=1, **blocks)
    if arch < 90:
        # sm_80's mma.sync operands and the fp32 rotary halves share the register file: at D = 128
        # 16-key tiles, and one stage fewer for the smallest heads, keep them from spilling.
        if D > 64:
            return dict(BLOCK_M=128, BLOCK_N=16, num_warps=8, num_stages=2, **blocks)
        return dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2 if D <= 16 else 3, **blocks)
    if D > 64:
        return dict(BLOCK_M=128, BLOCK_N=32, num_warps=8, num_stages=2, **blocks)
    return dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, **blocks)


def _launch_config(D: int, dtype: torch.dtype, device: torch.device) -> dict:
    """The launch's tiles; the interpreter gets small ones so short test sequences loop over tiles."""
    if interpreting():
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1, **_blocks(D))
    return _cuda_tiles(D, dtype, cuda_arch(device))


def rotary_attention(q, k, v, cos, sin, key_padding_mask=None, scale=None, out=None):
    """Fused rotary + softmax attention (ESM-2 self-attention core), Triton.

    Args:
        q, k, v: [B, L, H, D] fp16/bf16/fp32; any strides with unit stride on D (views of a fused
            projection are fine). D in {16, 24, 32, 64, 128} (any even D <= 128 works).
        cos, sin: [L, D] rotary tables, rotate-halves layout (fp32; converted if not).
        key_padding_mask: [B, L] bool, True = padding key, or None.
        scale: query scale, default D**-0.5.
        out: optional [B, L, H, D] buffer of q's dtype (unit stride on D) to write into.
    Returns:
        [B, L, H, D] in q's dtype.
    """
    require_triton()
    _check_inputs(q, k, v, cos, sin, key_padding_mask)
    B, L, H, D = q.shape
    q, k, v, scale, out = attention_operands("rotary_attention", "[B, L, H, D]", q, k, v, scale, out)
    cos = cos.to(device=q.device, dtype=torch.float32).contiguous()
    sin = sin.to(device=q.device, dtype=torch.float32).contiguous()
    if key_padding_mask is not None:
        mask = key_padding_mask.to(device=q.device, dtype=torch.bool)
        mask = mask.contiguous().view(torch.uint8)  # [B, L]
        stride_mb = mask.stride(0)
    else:
        mask, stride_mb = q, 0  # never read: HAS_MASK is False
    if B * L * H == 0:
        return out
    cfg = _launch_config(D, q.dtype, q.device)
    grid = (triton.cdiv(L, cfg["BLOCK_M"]) * B * H,)
    _rotary_attention_fwd[grid](
        q, k, v, cos, sin, mask, out,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        stride_mb,
        out.stride(0), out.stride(1), out.stride(2),
        L, H, D, scale * LOG2E.value,
        **attention_launch(cfg, key_padding_mask is not None, q.dtype),
    )
    return out


def aot_configs(arch: int = 90) -> list[AOTConfig]:
    """Every distinct launch of :func:`rotary_attention` the ESM-2 models make on sm_<arch>.

    Head dims of all ESM-2 sizes x fp16 (ESMFold's LM) / bf16 / fp32 x with and without padding
    mask. D is a runtime argument, so head dims with the same tiles (24 and 32: both pad to 32)
    run one compiled kernel, listed once and named by the dims it serves.
    """
    configs = []
    for dtype, tname in TRITON_DTYPES.items():
        by_tiles: dict[tuple, tuple[dict, list[int]]] = {}
        for D in _HEAD_DIMS:
            tiles = _cuda_tiles(D, dtype, arch)
            by_tiles.setdefault(tuple(sorted(tiles.items())), (tiles, []))[1].append(D)
        for tiles, dims in by_tiles.values():
            for has_mask in (False, True):
                signature = {
                    "q_ptr": f"*{tname}", "k_ptr": f"*{tname}", "v_ptr": f"*{tname}",
                    "cos_ptr": "*fp32", "sin_ptr": "*fp32",
                    "mask_ptr": "*u8" if has_mask else f"*{tname}",
                    "out_ptr": f"*{tname}",
                }
                for arg in (
                    "stride_qb", "stride_ql", "stride_qh", "stride_kb", "stride_kl", "stride_kh",
                    "stride_vb", "stride_vl", "stride_vh", "stride_mb",
                    "stride_ob", "stride_ol", "stride_oh", "L", "H", "D",
                ):
                    signature[arg] = "i32"
                signature["qk_scale"] = "fp32"
                name = f"rotary_attention_fwd_{tname}_d{'-'.join(map(str, dims))}{'_mask' if has_mask else ''}"
                launch = attention_launch(tiles, has_mask, dtype, aot=True)
                configs.append(aot_config(name, _rotary_attention_fwd, signature, launch, uses_dot=True))
    return configs
