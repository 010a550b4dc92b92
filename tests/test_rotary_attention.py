"""rotary_attention: Triton kernel and torch path against a float64 reference; reference against fair-esm."""

from __future__ import annotations

import re

import pytest
import torch

import fastfold_kernels.rotary_attention as rot
from fastfold_kernels import utils
from fastfold_kernels.rotary_attention import (
    aot_configs,
    rotary_attention,
    rotary_attention_reference,
    rotary_attention_torch,
)
from _util import LaunchRecorder, max_rel_err, on_device, poison_, randomize_

rotary_attention = on_device(rotary_attention)

# Error floor added to 3x the same-dtype reference's error (relative to max |out|).
ATOL = {torch.float32: 2e-6, torch.bfloat16: 4e-3, torch.float16: 5e-4}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# The tl.dot precisions each dtype can launch with (fp32: per torch.get_float32_matmul_precision()).
PRECISIONS = {torch.float32: ("ieee", "tf32x3", "tf32"), torch.bfloat16: ("tf32",), torch.float16: ("tf32",)}


def rotary_tables(L: int, D: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """ESM-2's rotate-halves tables for positions offset..offset+L-1: [L, D] fp32 each."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    freqs = torch.outer(torch.arange(offset, offset + L, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def make_qkv(B: int, L: int, H: int, D: int, std: float = 3.0, seed: int = 0):
    """q, k, v as non-contiguous [B, L, H, D] views of one fused [B, L, 3*H*D] projection."""
    gen = torch.Generator().manual_seed(seed)
    proj = torch.randn(B, L, 3 * H * D, generator=gen) * std
    q, k, v = proj.view(B, L, 3, H, D).unbind(2)
    return q, k, v


def padding_mask(B: int, L: int, seed: int = 0) -> torch.Tensor:
    """[B, L] bool, True = padding: batch element b has a random valid length (element 0 unpadded)."""
    gen = torch.Generator().manual_seed(seed + 1)
    lengths = torch.randint(L // 3, L, (B,), generator=gen)
    lengths[0] = L
    return torch.arange(L)[None, :] >= lengths[:, None]


def check_against_fp64(fn, B, L, H, D, dtype, masked, seed):
    q, k, v = make_qkv(B, L, H, D, seed=seed)
    cos, sin = rotary_tables(L, D)
    mask = padding_mask(B, L, seed) if masked else None
    exact = rotary_attention_reference(q.double(), k.double(), v.double(), cos, sin, mask)
    args = [t.to(dtype) for t in (q, k, v)]
    same_dtype = rotary_attention_reference(*args, cos, sin, mask)
    out = fn(*args, cos, sin, mask)
    assert out.dtype == dtype and out.shape == (B, L, H, D)
    assert torch.isfinite(out).all()
    err, ref_err = max_rel_err(out, exact), max_rel_err(same_dtype, exact)
    assert err <= 3 * ref_err + ATOL[dtype], (err, ref_err)
    return err, ref_err


# (D, L) pairs: every ESM-2 head dim, odd lengths that leave partial tiles.
HEAD_CASES = [(16, 37), (24, 17), (32, 23), (64, 17), (128, 17)]


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D,L", HEAD_CASES)
def test_kernel_matches_fp64_reference(D, L, dtype, masked):
    check_against_fp64(rotary_attention, 2, L, 2, D, dtype, masked, seed=D + L)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D,L", HEAD_CASES)
def test_torch_matches_fp64_reference(D, L, dtype, masked):
    check_against_fp64(rotary_attention_torch, 2, L, 3, D, dtype, masked, seed=D + L + 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_writes_every_element_of_out(dtype):
    B, L, H, D = 2, 37, 2, 24
    q, k, v = (t.to(dtype) for t in make_qkv(B, L, H, D, seed=3))
    cos, sin = rotary_tables(L, D)
    mask = padding_mask(B, L, 3)
    out = poison_(torch.empty(B, L, H, D, dtype=dtype))
    got = rotary_attention(q, k, v, cos, sin, mask, out=out)
    assert got.data_ptr() == out.data_ptr()
    assert torch.isfinite(out).all()
    expected = rotary_attention_reference(q.double(), k.double(), v.double(), cos, sin, mask)
    same_dtype = rotary_attention_reference(q, k, v, cos, sin, mask)
    assert max_rel_err(out, expected) <= 3 * max_rel_err(same_dtype, expected) + ATOL[dtype]


@pytest.mark.parametrize("fn", [rotary_attention, rotary_attention_torch], ids=["kernel", "torch"])
def test_rotary_is_applied_and_relative(fn):
    """A kernel that skipped the rotary would match the no-rotary attention and fail here."""
    B, L, H, D = 1, 23, 2, 32
    q, k, v = make_qkv(B, L, H, D, std=1.5, seed=4)
    cos, sin = rotary_tables(L, D)
    out = fn(q, k, v, cos, sin)
    ones, zeros = torch.ones(L, D), torch.zeros(L, D)
    no_rotary = rotary_attention_reference(q.double(), k.double(), v.double(), ones, zeros)
    assert max_rel_err(out, no_rotary) > 1e-2
    # Rotary logits depend only on relative position: shifting every position changes nothing.
    cos_s, sin_s = rotary_tables(L, D, offset=11)
    shifted = fn(q, k, v, cos_s, sin_s)
    assert max_rel_err(shifted, out) < 1e-5
    # And with identity tables the op is plain scaled dot-product attention.
    plain = fn(q, k, v, ones, zeros)
    assert max_rel_err(plain, no_rotary) < 1e-5


@pytest.mark.parametrize("fn", [rotary_attention, rotary_attention_torch], ids=["kernel", "torch"])
def test_padding_keys_are_ignored(fn):
    """Queries of a padded sequence see exactly the attention of the unpadded sequence."""
    L, n_valid, H, D = 37, 23, 2, 16
    q, k, v = make_qkv(1, L, H, D, seed=5)
    cos, sin = rotary_tables(L, D)
    mask = torch.arange(L)[None, :] >= n_valid
    padded = fn(q, k, v, cos, sin, mask)
    trimmed = rotary_attention_reference(
        *(t[:, :n_valid].double() for t in (q, k, v)), cos[:n_valid], sin[:n_valid]
    )
    assert max_rel_err(padded[:, :n_valid], trimmed) < 1e-5


@pytest.mark.parametrize("fn", [rotary_attention, rotary_attention_torch], ids=["kernel", "torch"])
def test_explicit_scale(fn):
    B, L, H, D = 1, 17, 2, 32
    q, k, v = make_qkv(B, L, H, D, std=1.0, seed=6)
    cos, sin = rotary_tables(L, D)
    expected = rotary_attention_reference(q.double(), k.double(), v.double(), cos, sin, scale=0.37)
    assert max_rel_err(fn(q, k, v, cos, sin, scale=0.37), expected) < 1e-5
    default = rotary_attention_reference(q.double(), k.double(), v.double(), cos, sin)
    assert max_rel_err(expected, default) > 1e-2


def test_reference_matches_fair_esm_multihead_attention():
    """The oracle itself against fair-esm's rotary MultiheadAttention (projections + out_proj ours)."""
    from esm.multihead_attention import MultiheadAttention

    E, H, L, B = 48, 2, 17, 2
    D = E // H
    mha = randomize_(MultiheadAttention(E, H, self_attention=True, use_rotary_embeddings=True), seed=7).double()
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(L, B, E, generator=gen, dtype=torch.float64) * 3  # fair-esm: time first
    mask = padding_mask(B, L, 7)
    expected, _ = mha(x, x, x, key_padding_mask=mask, need_weights=False)  # [L, B, E]

    xb = x.transpose(0, 1)  # [B, L, E]
    q, k, v = (p(xb).view(B, L, H, D) for p in (mha.q_proj, mha.k_proj, mha.v_proj))
    cos, sin = rotary_tables(L, D)
    core = rotary_attention_reference(q, k, v, cos, sin, mask)
    got = mha.out_proj(core.reshape(B, L, E)).transpose(0, 1)
    # fair-esm computes its tables in fp32 like ours; the rest is float64.
    assert max_rel_err(got, expected) < 1e-6


def rotated_logits_fp64(q, k, cos, sin, scale):
    """scale * <rot(q_i), rot(k_j)> in float64, [B, H, L, L], with the rotation written out per half."""
    h = q.shape[-1] // 2
    c, s = cos.double(), sin.double()

    def rot(x):  # [B, L, H, D] -> [B, H, L, D]
        x = x.double().transpose(1, 2)
        x1, x2 = x[..., :h], x[..., h:]
        return torch.cat((x1 * c[:, :h] - x2 * s[:, :h], x2 * c[:, h:] + x1 * s[:, h:]), dim=-1)

    return scale * rot(q) @ rot(k).transpose(-1, -2)


# Max abs error of the returned probabilities against the float64 softmax (probs are in [0, 1]).
PROBS_ATOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 2e-2, torch.float16: 2e-3}


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, *DTYPES])
def test_reference_returns_weights(dtype, masked):
    """``return_weights=True``: the same output, and probabilities [B, H, L, L] in q's dtype that are the
    softmax of the rotated logits (padding keys exactly 0)."""
    B, L, H, D = 2, 19, 3, 24
    q, k, v = (t.to(dtype) for t in make_qkv(B, L, H, D, std=1.0, seed=21))
    cos, sin = rotary_tables(L, D)
    mask = padding_mask(B, L, 21) if masked else None
    out, probs = rotary_attention_reference(q, k, v, cos, sin, mask, scale=0.3, return_weights=True)
    assert torch.equal(out, rotary_attention_reference(q, k, v, cos, sin, mask, scale=0.3))
    assert probs.shape == (B, H, L, L) and probs.dtype == dtype
    logits = rotated_logits_fp64(q, k, cos, sin, 0.3)
    if mask is not None:
        logits = logits.masked_fill(mask[:, None, None, :], float("-inf"))
        assert (probs.masked_select(mask[:, None, None, :].expand_as(probs)) == 0).all()
    err = (probs.double() - logits.softmax(-1)).abs().max().item()
    assert err <= PROBS_ATOL[dtype], err


@pytest.mark.parametrize("arch", [90, 80])
def test_aot_configs_cover_every_esm2_launch(arch):
    """Every (dtype, dot precision, head dim, mask) launch the model makes on sm_<arch> has a config
    with its tiles."""
    from fastfold_kernels.rotary_attention import _kind_tiles

    configs = aot_configs(arch)
    names = {c.name for c in configs}
    assert len(names) == len(configs)
    tnames = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}
    # the forward without and with the stored log2-sum-exp2 (autograd), both backward launches
    kinds = {
        "fwd": ("STORE_LSE", False), "fwd_lse": ("STORE_LSE", True), "bwd_dkdv": ("DQ", False), "bwd_dq": ("DQ", True),
    }  # fmt: skip
    for dtype in DTYPES:
        for precision in PRECISIONS[dtype]:
            for D, _ in HEAD_CASES:
                for masked in (False, True):
                    for kind, (flag, value) in kinds.items():
                        tiles = _kind_tiles(kind, D, dtype, precision, arch)
                        launched_mask = masked and kind != "bwd_dq"  # dq zeroes padding keys instead
                        assert any(
                            c.name.startswith(f"rotary_attention_{kind}_") and c.constexprs[flag] == value
                            and c.signature["q_ptr"] == tnames[dtype] and c.constexprs["HAS_MASK"] == launched_mask
                            and c.constexprs["DOT_PRECISION"] == tiles.get("DOT_PRECISION", precision)
                            and str(D) in re.search(r"_d([\d-]+)", c.name).group(1).split("-")
                            and c.num_warps == tiles["num_warps"] and c.num_stages == tiles["num_stages"]
                            and all(c.constexprs[k] == tiles[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_D", "BLOCK_H"))
                            and c.constexprs.get("SPLIT_DKDV", False) == tiles.get("SPLIT_DKDV", False)
                            for c in configs
                        ), (dtype, precision, D, masked, kind)
    for c in configs:
        assert c.uses_dot and c.fn is not None
        assert set(c.signature) | set(c.constexprs) >= {"q_ptr", "k_ptr", "v_ptr", "L", "H", "D", "HAS_MASK"}
        assert c.constexprs["BLOCK_D"] >= 16 and c.constexprs["UPCAST_DOT"] is False
        if c.signature["q_ptr"] == "*fp32":  # named by their precision
            assert f"_fp32_{c.constexprs['DOT_PRECISION']}_" in c.name
        else:
            assert c.constexprs["DOT_PRECISION"] == "tf32"


def test_shape_errors_are_loud():
    q, k, v = make_qkv(1, 17, 2, 16)
    cos, sin = rotary_tables(17, 16)
    with pytest.raises(ValueError):
        rotary_attention_torch(q, k, v, cos[:5], sin[:5])
    with pytest.raises(ValueError):
        rotary_attention(q, k, v, cos, sin, torch.zeros(1, 5, dtype=torch.bool))


# --------------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------------
def attention_grads(fn, q, k, v, cos, sin, mask, upstream, dtype):
    """d sum(out * upstream) / d(q, k, v), the inputs cast to ``dtype`` as fresh leaves."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    out = fn(*leaves, cos, sin, mask)
    assert out.grad_fn is not None
    return torch.autograd.grad((out.double() * upstream).sum(), leaves)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("fn", [rotary_attention_reference, rotary_attention_torch], ids=["reference", "torch"])
def test_gradcheck_fp64(fn, masked):
    B, L, H, D = 2, 5, 1, 4
    q, k, v = (t.double().requires_grad_() for t in make_qkv(B, L, H, D, std=1.5, seed=31))
    cos, sin = rotary_tables(L, D)
    mask = padding_mask(B, L, 31) if masked else None
    assert torch.autograd.gradcheck(lambda q, k, v: fn(q, k, v, cos, sin, mask, 0.7), (q, k, v))


# (D, L, dtype): partial tiles in both directions (L = 37 spans three 16-row interpreter tiles).
GRAD_CASES = [(16, 37, torch.float32), (24, 17, torch.float32), (16, 37, torch.bfloat16), (24, 17, torch.bfloat16)]
# Error floor (relative to max |grad|) added to 3x the same-dtype reference's error.
GRAD_ATOL = {torch.float32: 2e-6, torch.bfloat16: 8e-3}


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("D,L,dtype", GRAD_CASES, ids=str)
def test_kernel_gradients_match_fp64_reference(D, L, dtype, masked, poisoned_empty):
    """dq, dk, dv of the fused backward against float64 autograd of the reference, each within 3x the
    same-dtype reference's error: non-zero upstream gradients (std 2), every input checked."""
    B, H = 2, 1 if L > 32 else 2  # the interpreter's time grows with the tiles: one head at L = 37
    q, k, v = make_qkv(B, L, H, D, seed=D * L)
    cos, sin = rotary_tables(L, D)
    mask = padding_mask(B, L, D) if masked else None
    upstream = 2.0 * torch.randn(B, L, H, D, generator=torch.Generator().manual_seed(L), dtype=torch.float64)
    exact = attention_grads(rotary_attention_reference, q, k, v, cos, sin, mask, upstream, torch.float64)
    same_dtype = attention_grads(rotary_attention_reference, q, k, v, cos, sin, mask, upstream, dtype)
    got = attention_grads(rotary_attention, q, k, v, cos, sin, mask, upstream, dtype)
    for name, g, g64, g_ref in zip("qkv", got, exact, same_dtype):
        assert g.dtype == dtype and g.shape == (B, L, H, D) and torch.isfinite(g).all(), name
        assert g64.abs().max() > 0.1, name  # the comparison is not vacuous
        err, ref_err = max_rel_err(g, g64), max_rel_err(g_ref, g64)
        assert err <= 3 * ref_err + GRAD_ATOL[dtype], (name, err, ref_err)
    if masked:  # padding keys get no gradient at all
        pad = mask[:, :, None, None].expand_as(got[1])
        assert (got[1][pad] == 0).all() and (got[2][pad] == 0).all()


def test_torch_path_gradients_match_and_forward_is_unchanged():
    """Under autograd the torch path rotates out of place: same gradients as the reference (fp32),
    and a forward within rounding of the no-grad (in-place rotary) one."""
    B, L, H, D = 2, 17, 2, 24
    q, k, v = make_qkv(B, L, H, D, seed=41)
    cos, sin = rotary_tables(L, D)
    mask = padding_mask(B, L, 41)
    upstream = 2.0 * torch.randn(B, L, H, D, generator=torch.Generator().manual_seed(41), dtype=torch.float64)
    exact = attention_grads(rotary_attention_reference, q, k, v, cos, sin, mask, upstream, torch.float64)
    got = attention_grads(rotary_attention_torch, q, k, v, cos, sin, mask, upstream, torch.float32)
    for name, g, g64 in zip("qkv", got, exact):
        assert max_rel_err(g, g64) < 1e-5, name
    with torch.no_grad():
        expected = rotary_attention_torch(q, k, v, cos, sin, mask)
    out = rotary_attention_torch(q.requires_grad_(), k, v, cos, sin, mask)
    assert out.requires_grad and max_rel_err(out.detach(), expected) < 1e-6


def test_kernel_autograd_forward_is_unchanged_and_errors_are_clear():
    B, L, H, D = 1, 17, 2, 16
    q, k, v = (t.to(torch.bfloat16) for t in make_qkv(B, L, H, D, seed=43))
    cos, sin = rotary_tables(L, D)
    with torch.no_grad():
        expected = rotary_attention(q, k, v, cos, sin)
    qg = q.clone().requires_grad_()
    out = rotary_attention(qg, k, v, cos, sin)
    assert torch.equal(out.detach(), expected)
    (g,) = torch.autograd.grad((out.float() ** 2).sum(), qg, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):  # no silent double backward
        g.float().sum().backward()
    with pytest.raises(RuntimeError, match="out= cannot be used with autograd"):
        rotary_attention(qg, k, v, cos, sin, out=torch.empty_like(q))
    with pytest.raises(RuntimeError, match="no gradient for the rotary tables"):
        rotary_attention(q, k, v, cos.requires_grad_(), sin)
    with torch.no_grad():  # out= still works without autograd
        out = torch.empty_like(q)
        assert rotary_attention(qg, k, v, cos, sin, out=out) is out and torch.equal(out, expected)


# --------------------------------------------------------------------------------------------------
# The CUDA launcher's tile configurations, run through the interpreter (emulate_arch)
# --------------------------------------------------------------------------------------------------

ARCHS = (80, 90)
# The torch setting that selects each fp32 dot precision (the policy, spelled out so the test can fail).
MATMUL_PRECISION = {"ieee": "highest", "tf32x3": "high", "tf32": "medium"}
# Error floors of fp32 launched on tensor cores (a GPU run; the interpreter computes tf32 dots in fp32),
# and of fp16 gradients (bf16's floor scaled by the ratio of their roundings, 8).
TF32_ATOL = {"tf32x3": 1e-5, "tf32": 5e-3}
GRAD_ATOL_FP16 = 1e-3


@pytest.fixture
def matmul_precision():
    """Sets torch.set_float32_matmul_precision for the test and restores it afterwards."""
    before = torch.get_float32_matmul_precision()
    yield torch.set_float32_matmul_precision
    torch.set_float32_matmul_precision(before)


def _interpreted_tiles(tiles: dict) -> tuple:
    """What of a configuration the interpreter computes with: the tiles (warps and stages it ignores)."""
    return (*(tiles[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_D", "BLOCK_H")), tiles.get("SPLIT_DKDV", False))


def _tile_cases(kinds: tuple[str, ...]) -> list:
    """One (arch, dtype, precision, D) per distinct interpreted configuration of the launches ``kinds``
    (one forward, or the three launches of a forward + backward) over sm_80/sm_90, dtypes, precisions and
    head dims. Of head dims sharing a configuration the padded one (24 in 32-wide tiles) is kept."""
    cases: dict[tuple, tuple] = {}
    for arch in ARCHS:
        for dtype in DTYPES:
            for precision in PRECISIONS[dtype]:
                for D in sorted(rot._HEAD_DIMS, key=lambda D: D == utils.dot_block(D)):
                    key = (dtype, *(_interpreted_tiles(rot._kind_tiles(k, D, dtype, precision, arch)) for k in kinds))
                    cases.setdefault(key, (arch, dtype, precision, D))
    return list(cases.values())


def _case_id(case) -> str:
    arch, dtype, precision, D = case
    return f"sm{arch}-{str(dtype)[6:]}{'-' + precision if dtype == torch.float32 else ''}-d{D}"


def _ragged_length(kinds: tuple[str, ...], case) -> int:
    """A length spanning more than one tile of every launch, in queries and keys, the last one partial."""
    arch, dtype, precision, D = case
    tiles = [rot._kind_tiles(k, D, dtype, precision, arch) for k in kinds]
    return max(max(t["BLOCK_M"], t["BLOCK_N"]) for t in tiles) + 3


def _holes_mask(L: int, seed: int) -> torch.Tensor:
    """[1, L] bool, True = padding: random keys padded, the last (ragged) tile's keys kept real."""
    mask = torch.rand(1, L, generator=torch.Generator().manual_seed(seed)) < 0.3
    mask[:, -3:] = False
    return mask


def _fp32_atol(dtype: torch.dtype, precision: str, atol: float) -> float:
    return TF32_ATOL[precision] if dtype == torch.float32 and precision != "ieee" and not utils.interpreting() else atol


FWD_CASES = _tile_cases(("fwd",))
GRAD_TILE_CASES = _tile_cases(("fwd_lse", "bwd_dkdv", "bwd_dq"))


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("case", FWD_CASES, ids=_case_id)
def test_every_cuda_forward_config(case, masked, matmul_precision):
    """The forward at each tile configuration the CUDA launcher picks, at a length with ragged query and
    key tiles, into a NaN-poisoned out=, against the float64 reference."""
    arch, dtype, precision, D = case
    matmul_precision(MATMUL_PRECISION[precision] if dtype == torch.float32 else "highest")
    L = _ragged_length(("fwd",), case)
    q, k, v = (t.to(dtype) for t in make_qkv(1, L, 1, D, seed=L + D))
    cos, sin = rotary_tables(L, D)
    mask = _holes_mask(L, D) if masked else None
    out = poison_(torch.empty(1, L, 1, D, dtype=dtype))
    with utils.emulate_arch(arch):
        rotary_attention(q, k, v, cos, sin, mask, out=out)
    exact = rotary_attention_reference(q.double(), k.double(), v.double(), cos, sin, mask)
    same_dtype = rotary_attention_reference(q, k, v, cos, sin, mask)
    assert torch.isfinite(out).all()
    err, ref_err = max_rel_err(out, exact), max_rel_err(same_dtype, exact)
    assert err <= 3 * ref_err + _fp32_atol(dtype, precision, ATOL[dtype]), (err, ref_err)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("case", GRAD_TILE_CASES, ids=_case_id)
def test_every_cuda_backward_config(case, masked, matmul_precision, poisoned_empty):
    """Forward (with the stored log2-sum-exp2) and both backward launches at each tile configuration the
    CUDA launcher picks, NaN-poisoned buffers: dq, dk, dv against float64. The length spans several
    ragged tiles of both backward launches; the forward's (larger) tiles are the no-grad forward's,
    which the test above runs across tiles (only STORE_LSE differs)."""
    arch, dtype, precision, D = case
    matmul_precision(MATMUL_PRECISION[precision] if dtype == torch.float32 else "highest")
    L = _ragged_length(("bwd_dkdv", "bwd_dq"), case)  # the forward's tiles span L in test_every_cuda_forward_config
    q, k, v = make_qkv(1, L, 1, D, seed=L * D)
    cos, sin = rotary_tables(L, D)
    mask = _holes_mask(L, D) if masked else None
    upstream = 2.0 * torch.randn(1, L, 1, D, generator=torch.Generator().manual_seed(D), dtype=torch.float64)
    exact = attention_grads(rotary_attention_reference, q, k, v, cos, sin, mask, upstream, torch.float64)
    same_dtype = attention_grads(rotary_attention_reference, q, k, v, cos, sin, mask, upstream, dtype)
    with utils.emulate_arch(arch):
        got = attention_grads(rotary_attention, q, k, v, cos, sin, mask, upstream, dtype)
    atol = _fp32_atol(dtype, precision, GRAD_ATOL.get(dtype, GRAD_ATOL_FP16))
    for name, g, g64, g_ref in zip("qkv", got, exact, same_dtype):
        assert torch.isfinite(g).all(), name
        err, ref_err = max_rel_err(g, g64), max_rel_err(g_ref, g64)
        assert err <= 3 * ref_err + atol, (name, err, ref_err)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dot_precision_follows_torch_setting(dtype, monkeypatch, matmul_precision):
    """Each launch (forward, backward) passes the DOT_PRECISION the policy gives for the torch setting,
    and on a GPU tiles chosen for that precision; half dtypes always "tf32"."""
    q, k, v = (t.to(dtype) for t in make_qkv(1, 17, 1, 16, seed=51))
    cos, sin = rotary_tables(17, 16)
    for setting, precision in (("highest", "ieee"), ("high", "tf32x3"), ("medium", "tf32")):
        matmul_precision(setting)
        fwd = LaunchRecorder(rot._rotary_attention_fwd)
        bwd = LaunchRecorder(rot._rotary_attention_bwd)
        monkeypatch.setattr(rot, "_rotary_attention_fwd", fwd)
        monkeypatch.setattr(rot, "_rotary_attention_bwd", bwd)
        with utils.emulate_arch(90):
            attention_grads(rotary_attention, q, k, v, cos, sin, None, torch.ones(1, 17, 1, 16), dtype)
        expected = precision if dtype == torch.float32 else "tf32"
        assert [l["DOT_PRECISION"] for l in fwd.launches + bwd.launches] == [expected] * 3
        for kind, launched in zip(("fwd_lse", "bwd_dkdv", "bwd_dq"), fwd.launches + bwd.launches):
            tiles = rot._kind_tiles(kind, 16, dtype, expected, 90)
            assert all(launched[key] == tiles[key] for key in ("BLOCK_M", "BLOCK_N", "BLOCK_D", "BLOCK_H")), kind
        monkeypatch.undo()


def test_out_of_resources_falls_back_once_then_fails_loudly(monkeypatch):
    """A launch that runs out of GPU resources is retried once with the next smaller tiles (and the
    result is right); when that fails too, the error names the op."""
    monkeypatch.setattr(utils, "_FALLBACKS", {})
    L, D = 70, 32
    q, k, v = (t.to(torch.float16) for t in make_qkv(1, L, 1, D, seed=52))
    cos, sin = rotary_tables(L, D)
    big = rot._kind_tiles("fwd", D, torch.float16, "tf32", 90)
    smaller = rot._smaller(big)
    assert smaller["BLOCK_M"] * smaller["BLOCK_N"] < big["BLOCK_M"] * big["BLOCK_N"]
    fwd = LaunchRecorder(rot._rotary_attention_fwd, limit=smaller["BLOCK_M"] * smaller["BLOCK_N"])
    monkeypatch.setattr(rot, "_rotary_attention_fwd", fwd)
    with utils.emulate_arch(90), pytest.warns(RuntimeWarning, match="smaller configuration"):
        out = rotary_attention(q, k, v, cos, sin)
    assert [(l["BLOCK_M"], l["BLOCK_N"]) for l in fwd.launches] == [
        (big["BLOCK_M"], big["BLOCK_N"]), (smaller["BLOCK_M"], smaller["BLOCK_N"])
    ]
    exact = rotary_attention_reference(q.double(), k.double(), v.double(), cos, sin)
    same_dtype = rotary_attention_reference(q, k, v, cos, sin)
    assert max_rel_err(out, exact) <= 3 * max_rel_err(same_dtype, exact) + ATOL[torch.float16]
    fwd.launches.clear()  # the fallback is remembered: the next launch goes straight to it
    with utils.emulate_arch(90):
        rotary_attention(q, k, v, cos, sin)
    assert [(l["BLOCK_M"], l["BLOCK_N"]) for l in fwd.launches] == [(smaller["BLOCK_M"], smaller["BLOCK_N"])]

    monkeypatch.setattr(utils, "_FALLBACKS", {})
    fwd.limit = 0  # the smaller configuration runs out too
    with utils.emulate_arch(90), pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="rotary_attention"):
        rotary_attention(q, k, v, cos, sin)
