"""Triangle self-attention core (AlphaFold2 Algorithms 13/14; ESMFold's pair-biased sequence attention).

For every row ``i`` of the pair representation, queries and keys run along ``j`` and all rows share
one ``[H, J, J]`` bias (the "triangle bias" projected from the pair state). OpenFold's semantics:

    logits[b, i, h, q, k] = scale * <q[b,i,q,h], k[b,i,k,h]> + bias[b, h, q, k] + (mask[b, i, k] - 1) * 1e9
    out[b, i, q, h]       = sum_k softmax_k(logits)[b, i, h, q, k] * v[b, i, k, h]

The mask penalty is large but finite, so a fully masked row (padding) gives finite output, never NaN.

* :func:`triangle_attention` - Triton flash-attention kernel: one program per (b, i, h, query tile),
  keys stream in tiles, the bias tile is read straight from the shared ``[B, H, J, J]`` tensor, and
  neither the bias nor the ``[B, I, H, J, J]`` logits are ever expanded (O(L^2) memory).
* :func:`triangle_attention_reference` - naive einsum + softmax over everything at once (the oracle).
* :func:`triangle_attention_torch` - ``F.scaled_dot_product_attention`` over chunks of rows, so only
  ``[chunk, H, J, J]`` scores/masks exist at a time (the ``torch`` backend, what CPU users run).

All three share the signature ``(q, k, v, bias, mask=None, scale=None, chunk_size=None)`` (the kernel
adds ``out=``). ``chunk_size``, as in every op over the pair representation, is an upper bound on
the pair rows (here rows ``i``) handled per block of work; None chooses. It bounds peak memory, never
changes the result, and only :func:`triangle_attention_torch` needs it: the reference and the kernel
(O(L^2) memory whatever the rows) accept and ignore it.

All three are differentiable in q, k, v and bias (never in the mask): the torch path switches to
out-of-place forms whenever autograd records, and the kernel's backward recomputes the forward through
the torch path (:func:`recompute_backward`). The kernel's ``out=`` is inference-only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .utils import (
    LOG2E, TRITON_DTYPES, AOTConfig, aot_config, aot_precisions, attention_launch, attention_operands, dot,
    dot_block, dot_precision, launch_arch, launch_with_fallback, recompute_backward, records_grad,
    require_triton, tl, triton,
)  # fmt: skip

__all__ = [
    "triangle_attention",
    "triangle_attention_reference",
    "triangle_attention_torch",
    "aot_configs",
]

_MASK_PENALTY = 1e9  # OpenFold's inf for masked keys: finite, so a fully masked row stays finite
_MASK_PENALTY_LOG2 = tl.constexpr(_MASK_PENALTY * LOG2E.value)  # the kernel's, in log2 units
# Scores materialised per chunk by the torch path (fp32 [chunk, H, J, J] scores plus the mask).
_TORCH_SCORE_BUDGET_BYTES = 128 * 2**20


def _check_inputs(q, k, v, bias, mask) -> None:
    if q.dim() != 5 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share one [B, I, J, H, D] shape; got {q.shape}, {k.shape}, {v.shape}")
    B, I, J, H, D = q.shape
    if bias.shape != (B, H, J, J):
        raise ValueError(f"bias must be [B, H, J, J] = [{B}, {H}, {J}, {J}]; got {tuple(bias.shape)}")
    if mask is not None and mask.shape != (B, I, J):
        raise ValueError(f"mask must be [B, I, J] = [{B}, {I}, {J}]; got {tuple(mask.shape)}")


# --------------------------------------------------------------------------------------------
# reference: the oracle
# --------------------------------------------------------------------------------------------


def triangle_attention_reference(q, k, v, bias, mask=None, scale=None, chunk_size=None):
    """Naive triangle attention (AF2 Alg. 13/14 core): full [B, I, H, J, J] logits, one softmax.

    q, k, v: [B, I, J, H, D]; bias: [B, H, J, J]; mask: [B, I, J] (1 = key attended) or None.
    Matmuls run in the input dtype, bias/mask/softmax in (at least) fp32. ``chunk_size`` is
    accepted and ignored. Returns [B, I, J, H, D] in q's dtype.
    """
    _check_inputs(q, k, v, bias, mask)
    D = q.shape[-1]
    scale = D**-0.5 if scale is None else scale
    cdt = torch.promote_types(q.dtype, torch.float32)
    logits = torch.einsum("bijhd,bikhd->bihjk", q, k).to(cdt) * scale  # [B, I, H, J, J]
    logits = logits + bias[:, None].to(cdt)
    if mask is not None:
        logits = logits + ((mask.to(cdt) - 1) * _MASK_PENALTY)[:, :, None, None, :]
    probs = torch.softmax(logits, dim=-1).to(v.dtype)
    return torch.einsum("bihjk,bikhd->bijhd", probs, v).to(q.dtype)  # [B, I, J, H, D]


# --------------------------------------------------------------------------------------------
# torch: the fast, memory-lean CPU path
# --------------------------------------------------------------------------------------------


def _auto_chunk(I: int, H: int, J: int) -> int:
    """Rows per SDPA call so the fp32 [chunk, H, J, J] scores stay within the budget."""
    per_row = H * J * J * 4
    return max(1, min(I, _TORCH_SCORE_BUDGET_BYTES // max(per_row, 1)))


def triangle_attention_torch(q, k, v, bias, mask=None, scale=None, chunk_size=None):
    """SDPA with a float additive mask, chunked over rows ``i`` (same semantics as the kernel).

    Per batch element and chunk of rows the q/k/v views are permuted to [chunk, H, J, D] without
    copying; without a mask (or with an all-ones one) the shared bias is only broadcast, otherwise
    it is summed with the rows' key penalties into one reused [chunk, H, J, J] buffer.
    ``chunk_size`` rows ``i`` per call (None: automatic, about 128 MB of scores).
    Returns [B, I, J, H, D] (contiguous) in q's dtype. When autograd records, the masks are summed out
    of place (an ``out=`` op cannot be differentiated); under no_grad one buffer is reused.
    """
    _check_inputs(q, k, v, bias, mask)
    B, I, J, H, D = q.shape
    scale = D**-0.5 if scale is None else scale
    chunk = _auto_chunk(I, H, J) if chunk_size is None else max(1, int(chunk_size))
    out = torch.empty((B, I, J, H, D), dtype=q.dtype, device=q.device)
    bias = bias.to(q.dtype)
    if mask is not None and bool(mask.all()):
        mask = None  # an all-ones mask adds nothing: skip materialising [chunk, H, J, J] masks (2x faster)
    grad = records_grad(q, k, v, bias)
    mask_buf = None
    if mask is not None and not grad:
        mask_buf = torch.empty((min(chunk, I), H, J, J), dtype=q.dtype, device=q.device)
    # fp16 cannot hold 1e9: use a penalty that still drowns any logit but stays finite after adding bias.
    penalty = min(_MASK_PENALTY, torch.finfo(q.dtype).max / 4)
    for b in range(B):
        qb, kb, vb = (t[b].permute(0, 2, 1, 3) for t in (q, k, v))  # [I, H, J, D] views
        bias_b = bias[b].unsqueeze(0)  # [1, H, J, J]
        for i0 in range(0, I, chunk):
            i1 = min(I, i0 + chunk)
            if mask is None:
                attn_mask = bias_b.expand(i1 - i0, H, J, J)
            else:
                key_pen = (mask[b, i0:i1].to(q.dtype) - 1) * penalty  # [c, J]
                if grad:
                    attn_mask = bias_b + key_pen[:, None, None, :]  # [c, H, J, J]
                else:
                    attn_mask = torch.add(bias_b, key_pen[:, None, None, :], out=mask_buf[: i1 - i0])
            o = F.scaled_dot_product_attention(
                qb[i0:i1], kb[i0:i1], vb[i0:i1], attn_mask=attn_mask, scale=scale
            )  # [c, H, J, D]
            out[b, i0:i1].copy_(o.transpose(1, 2))
    return out


# --------------------------------------------------------------------------------------------
# Triton kernel
# --------------------------------------------------------------------------------------------


@triton.jit
def _triangle_attention_fwd(
    q_ptr, k_ptr, v_ptr, bias_ptr, mask_ptr, out_ptr,
    stride_qb, stride_qi, stride_qj, stride_qh,
    stride_kb, stride_ki, stride_kj, stride_kh,
    stride_vb, stride_vi, stride_vj, stride_vh,
    stride_bb, stride_bh, stride_bq, stride_bk,
    stride_mb, stride_mi,
    stride_ob, stride_oi, stride_oj, stride_oh,
    I, J, H, D, qk_scale,
    HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    """One program = BLOCK_M queries of one (b, i, h); keys of row i stream in BLOCK_N tiles.

    The flat 1-D grid puts query tiles fastest, so the programs sharing a row's keys/values run
    together (L2 reuse). Logits are kept in log2 units (``qk_scale`` = scale * log2 e) for exp2.
    """
    pid = tl.program_id(0)
    num_m = tl.cdiv(J, BLOCK_M)
    pid_m = pid % num_m
    pid_bih = pid // num_m
    h = pid_bih % H
    bi = pid_bih // H
    i = (bi % I).to(tl.int64)  # int64: B*I*J*H*D passes 2^31 at J ~ 1500 with c = 128
    b = (bi // I).to(tl.int64)

    q_base = q_ptr + b * stride_qb + i * stride_qi + h * stride_qh
    k_base = k_ptr + b * stride_kb + i * stride_ki + h * stride_kh
    v_base = v_ptr + b * stride_vb + i * stride_vi + h * stride_vh
    bias_base = bias_ptr + b * stride_bb + h * stride_bh

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    d = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    m_ok = offs_m < J
    d_ok = d < D

    q = tl.load(
        q_base + offs_m[:, None] * stride_qj + d[None, :], mask=m_ok[:, None] & d_ok[None, :], other=0.0
    )
    q = (q.to(tl.float32) * qk_scale).to(q_ptr.dtype.element_ty)  # [BLOCK_M, BLOCK_D]

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    for start_n in range(0, J, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)  # [BLOCK_N]
        n_ok = offs_n < J
        kv_ok = n_ok[:, None] & d_ok[None, :]
        kt = tl.load(k_base + offs_n[:, None] * stride_kj + d[None, :], mask=kv_ok, other=0.0)  # [BLOCK_N, BLOCK_D]
        s = dot(q, tl.trans(kt), None, DOT_PRECISION, UPCAST_DOT)  # [BLOCK_M, BLOCK_N]
        bias = tl.load(
            bias_base + offs_m[:, None] * stride_bq + offs_n[None, :] * stride_bk,
            mask=m_ok[:, None] & n_ok[None, :],
            other=0.0,
        ).to(tl.float32)  # [BLOCK_M, BLOCK_N], the same tile for every row i
        s += bias * LOG2E
        if HAS_MASK:
            key_mask = tl.load(mask_ptr + b * stride_mb + i * stride_mi + offs_n, mask=n_ok, other=1.0)
            s += ((key_mask - 1.0) * _MASK_PENALTY_LOG2)[None, :]
        s = tl.where(n_ok[None, :], s, float("-inf"))  # keys past J: exactly zero weight

        # The first key tile always holds key 0 with a finite logit, so m_new is finite from the start.
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])  # [BLOCK_M, BLOCK_N]
        l_i = l_i * alpha + tl.sum(p, axis=1)
        vt = tl.load(v_base + offs_n[:, None] * stride_vj + d[None, :], mask=kv_ok, other=0.0)  # [BLOCK_N, BLOCK_D]
        acc = acc * alpha[:, None] + dot(p.to(vt.dtype), vt, None, DOT_PRECISION, UPCAST_DOT)
        m_i = m_new

    out = acc / l_i[:, None]
    o_ptrs = out_ptr + b * stride_ob + i * stride_oi + h * stride_oh + offs_m[:, None] * stride_oj + d[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


# What the interpreter launches: small tiles, so short test rows loop over several of them.
_INTERPRETER_TILES = dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)


def _cuda_tiles(D: int, dtype: torch.dtype, arch: int, precision: str) -> dict:
    """Tile sizes, warps and stages of the CUDA launch on sm_<arch> for q/k/v of ``dtype`` and the dots'
    ``precision`` (see :func:`~fastfold_kernels.utils.dot_precision`; ESMFold's H=4 / H=32 with D=32).
    The launcher and :func:`aot_configs` both take the tiles from here.

    Chosen from sm_90 and sm_80 AOT compiles (profiling/compile_report.py): the largest tiles
    without register spills.
    """
    block_d = dot_block(D)
    if dtype == torch.float32 and precision == "ieee":
        # ieee fp32 dots run on FMA units and hold whole tiles in registers: small tiles.
        return dict(BLOCK_M=64, BLOCK_N=32, BLOCK_D=block_d, num_warps=8, num_stages=2)
    if dtype == torch.float32:
        # tf32 / 3xtf32 on tensor cores: 64 query rows (one wgmma on sm_90); fp32 operands take twice
        # the registers and shared memory of half ones. 3xtf32 splits every operand into high and low
        # parts: 16-key tiles (32 spill on sm_80).
        block_n = 16 if precision == "tf32x3" else 32
        return dict(BLOCK_M=64, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4, num_stages=2)
    if block_d > 64:
        return dict(BLOCK_M=64, BLOCK_N=32, BLOCK_D=block_d, num_warps=4, num_stages=2)
    # sm_80's mma.sync keeps the logits tile in registers: 64 keys with the mask spill there.
    block_n = 64 if arch >= 90 else 32
    return dict(BLOCK_M=128, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=8, num_stages=3)


def _smaller(tiles: dict) -> dict:
    """The next smaller configuration, tried once when a launch runs out of GPU resources: the larger
    of BLOCK_M / BLOCK_N halved (at least 16), one stage."""
    big = "BLOCK_M" if tiles["BLOCK_M"] >= tiles["BLOCK_N"] else "BLOCK_N"
    return {**tiles, big: max(16, tiles[big] // 2), "num_stages": 1}


def _launch_config(D: int, dtype: torch.dtype, device: torch.device) -> dict:
    """The tiles of a launch on ``device`` (see :func:`~fastfold_kernels.utils.launch_arch`): the CUDA
    tiles of its arch, or under the interpreter :data:`_INTERPRETER_TILES` (unless a test emulates an arch)."""
    arch = launch_arch(device)
    if arch is None:
        return dict(_INTERPRETER_TILES, BLOCK_D=dot_block(D))
    return _cuda_tiles(D, dtype, arch, dot_precision(dtype))


def triangle_attention(q, k, v, bias, mask=None, scale=None, chunk_size=None, out=None):
    """Fused triangle attention (AF2 Alg. 13/14 core, OpenFold semantics), Triton.

    Args:
        q, k, v: [B, I, J, H, D] fp16/bf16/fp32, attention over J within each row i; any strides
            with unit stride on D (views of a projection output are fine). D <= 128.
        bias: [B, H, J, J], bias[b, h, q, k] added to every row's logits (any strides).
        mask: [B, I, J] bool or 0/1 float (1 = key may be attended), or None.
        scale: query scale, default D**-0.5.
        chunk_size: accepted and ignored; the kernel needs no chunking (O(L^2) memory).
        out: optional [B, I, J, H, D] buffer of q's dtype (unit stride on D) to write into;
            inference only (a RuntimeError when autograd records).
    Returns:
        [B, I, J, H, D] in q's dtype. fp32 q/k/v multiply at ``torch.get_float32_matmul_precision()``
        ("highest": full fp32, "high": 3xTF32, "medium": TF32; see
        :func:`~fastfold_kernels.utils.dot_precision`); the bias may be of another dtype (read as fp32).
        Differentiable in q, k, v and bias: backward recomputes the forward through
        :func:`triangle_attention_torch`.
    """
    require_triton()
    _check_inputs(q, k, v, bias, mask)
    if not records_grad(q, k, v, bias):
        return _triangle_attention_kernel(q, k, v, bias, mask, scale, out)
    if out is not None:
        raise RuntimeError(
            "triangle_attention: out= is inference-only; with autograd recording (an input requires grad) "
            "call it without out= or under torch.no_grad()"
        )
    return recompute_backward(
        lambda *qkvb: _triangle_attention_kernel(*qkvb, mask, scale),
        lambda *qkvb: triangle_attention_torch(*qkvb, mask, scale),
        q, k, v, bias,
    )  # fmt: skip


def _triangle_attention_kernel(q, k, v, bias, mask, scale, out=None):
    """The forward launch of :func:`triangle_attention` (inputs already checked)."""
    B, I, J, H, D = q.shape
    q, k, v, scale, out = attention_operands("triangle_attention", "[B, I, J, H, D]", q, k, v, scale, out)
    if mask is not None:
        # [B, I, J] is L^2 scalars (1/(H*D) of q): one fp32 copy keeps a single kernel signature.
        mask_t = mask.to(device=q.device, dtype=torch.float32).contiguous()
        stride_mb, stride_mi = mask_t.stride(0), mask_t.stride(1)
    else:
        mask_t, stride_mb, stride_mi = q, 0, 0  # never read: HAS_MASK is False
    if B * I * J * H == 0:
        return out

    def launch(tiles: dict) -> None:
        grid = (triton.cdiv(J, tiles["BLOCK_M"]) * B * I * H,)
        _triangle_attention_fwd[grid](
            q, k, v, bias, mask_t, out,
            q.stride(0), q.stride(1), q.stride(2), q.stride(3),
            k.stride(0), k.stride(1), k.stride(2), k.stride(3),
            v.stride(0), v.stride(1), v.stride(2), v.stride(3),
            bias.stride(0), bias.stride(1), bias.stride(2), bias.stride(3),
            stride_mb, stride_mi,
            out.stride(0), out.stride(1), out.stride(2), out.stride(3),
            I, J, H, D, scale * LOG2E.value,
            **attention_launch(tiles, mask is not None, q.dtype),
        )  # fmt: skip

    cfg = _launch_config(D, q.dtype, q.device)
    launch_with_fallback("triangle_attention", cfg, _smaller(cfg), launch)
    return out


_STRIDE_ARGS = (
    "stride_qb", "stride_qi", "stride_qj", "stride_qh",
    "stride_kb", "stride_ki", "stride_kj", "stride_kh",
    "stride_vb", "stride_vi", "stride_vj", "stride_vh",
    "stride_bb", "stride_bh", "stride_bq", "stride_bk",
    "stride_mb", "stride_mi",
    "stride_ob", "stride_oi", "stride_oj", "stride_oh",
)


# (q/k/v dtype, bias dtype) of every launch ESMFold makes, for each model dtype: the trunk's triangle
# attention runs in the model's dtype; the sequence attention is a float32 island (ESMFold.float32_islands)
# whose bias comes from the pair track (PairToSequence), in the model's dtype.
MODEL_LAUNCH_DTYPES = (
    (torch.float32, torch.float32),
    (torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float16),
    (torch.float32, torch.bfloat16),
    (torch.float32, torch.float16),
)


def aot_configs(arch: int = 90) -> list[AOTConfig]:
    """Every launch of :func:`triangle_attention` ESMFold makes on sm_<arch>.

    D = 32 covers both the trunk's triangle attention (H = 4) and the pair-biased sequence
    attention (H = 32; H is a runtime argument). Each (q/k/v, bias) dtype pair of
    :data:`MODEL_LAUNCH_DTYPES`, fp32 q/k/v under each dot precision
    ``torch.get_float32_matmul_precision()`` can select (ieee, tf32x3, tf32), with and without a mask.
    """
    configs = []
    for dtype, bias_dtype in MODEL_LAUNCH_DTYPES:
        tname, bname = TRITON_DTYPES[dtype], TRITON_DTYPES[bias_dtype]
        for precision in aot_precisions(dtype):
            tiles = _cuda_tiles(32, dtype, arch, precision)
            tag = f"{tname}_{precision}" if dtype == torch.float32 else tname
            if bias_dtype != dtype:
                tag += f"_bias_{bname}"
            for has_mask in (False, True):
                signature = {
                    "q_ptr": f"*{tname}", "k_ptr": f"*{tname}", "v_ptr": f"*{tname}",
                    "bias_ptr": f"*{bname}",
                    "mask_ptr": "*fp32" if has_mask else f"*{tname}",  # q without a mask: never read
                    "out_ptr": f"*{tname}",
                }  # fmt: skip
                signature.update({name: "i32" for name in _STRIDE_ARGS})
                signature.update({"I": "i32", "J": "i32", "H": "i32", "D": "i32", "qk_scale": "fp32"})
                name = f"triangle_attention_fwd_{tag}_d32{'_mask' if has_mask else ''}"
                launch = attention_launch(tiles, has_mask, dtype, aot_precision=precision)
                configs.append(aot_config(name, _triangle_attention_fwd, signature, launch, uses_dot=True))
    return configs
