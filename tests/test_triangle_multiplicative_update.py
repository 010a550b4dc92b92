"""Triangle multiplicative update (Algorithms 11/12): Triton kernels (interpreted on CPU) and the torch
path against a float64 evaluation of the reference, which itself matches transformers' module."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from _util import on_device, randomize_

import fastfold_kernels.triangle_multiplicative_update as tmu
from fastfold_kernels import AOTConfig
from fastfold_kernels.triangle_multiplicative_update import (
    TriMulWeights,
    aot_configs,
    triangle_multiplicative_update,
    triangle_multiplicative_update_reference,
    triangle_multiplicative_update_torch,
)

triangle_multiplicative_update = on_device(triangle_multiplicative_update)
IMPLS = {"triton": triangle_multiplicative_update, "torch": triangle_multiplicative_update_torch}



def _hf_module(c: int, outgoing: bool, seed: int):
    from transformers.models.esm.modeling_esmfold import EsmFoldTriangleMultiplicativeUpdate

    module = EsmFoldTriangleMultiplicativeUpdate(SimpleNamespace(pairwise_state_dim=c), _outgoing=outgoing)
    return randomize_(module.double(), seed=seed)


def _weights_of(m) -> TriMulWeights:
    return TriMulWeights(
        m.layer_norm_in.weight, m.layer_norm_in.bias,
        m.linear_a_p.weight, m.linear_a_p.bias, m.linear_a_g.weight, m.linear_a_g.bias,
        m.linear_b_p.weight, m.linear_b_p.bias, m.linear_b_g.weight, m.linear_b_g.bias,
        m.layer_norm_out.weight, m.layer_norm_out.bias,
        m.linear_z.weight, m.linear_z.bias, m.linear_g.weight, m.linear_g.bias,
    )  # fmt: skip


def _random_weights(c_z: int, c_h: int, seed: int, p_scale: float = 1.0) -> TriMulWeights:
    """Non-trivial weights: LN weights != 1, every bias non-zero, fan-in scaled matrices (x p_scale for a_p, b_p)."""
    gen = torch.Generator().manual_seed(seed)
    mat = lambda o, i, s=1.0: s * torch.randn(o, i, generator=gen, dtype=torch.float64) / i**0.5  # noqa: E731
    vec = lambda n: 0.3 * torch.randn(n, generator=gen, dtype=torch.float64)  # noqa: E731
    return TriMulWeights(
        1 + vec(c_z), vec(c_z),
        mat(c_h, c_z, p_scale), vec(c_h), mat(c_h, c_z), vec(c_h),
        mat(c_h, c_z, p_scale), vec(c_h), mat(c_h, c_z), vec(c_h),
        1 + vec(c_h), vec(c_h), mat(c_z, c_h), vec(c_z), mat(c_z, c_z), vec(c_z),
    )  # fmt: skip


def _cast(w: TriMulWeights, dtype: torch.dtype) -> TriMulWeights:
    return TriMulWeights(*(t.detach().to(dtype) for t in w))


def _inputs(B: int, L: int, c_z: int, mask_kind: str, seed: int):
    gen = torch.Generator().manual_seed(seed)
    # std 3 with per-position offsets: LN_in has real work to do.
    z = 3.0 * torch.randn(B, L, L, c_z, generator=gen, dtype=torch.float64)
    z += torch.randn(B, L, L, 1, generator=gen, dtype=torch.float64)
    if mask_kind == "none":
        mask = None
    elif mask_kind == "random":
        mask = (torch.rand(B, L, L, generator=gen) > 0.25).double()
    elif mask_kind == "padded":  # a padded batch: sequence b has length lengths[b]
        lengths = [L - 6 * b for b in range(B)]
        seq = torch.stack([(torch.arange(L) < n).double() for n in lengths])  # [B, L]
        mask = seq[:, :, None] * seq[:, None, :]
    else:
        raise ValueError(mask_kind)
    return z, mask


def _references(z, mask, w, outgoing, dtype):
    """(float64 reference, same-dtype reference, atol) for the error check."""
    ref64 = triangle_multiplicative_update_reference(z, mask, _cast(w, torch.float64), outgoing)
    ref_same = triangle_multiplicative_update_reference(z.to(dtype), mask, _cast(w, dtype), outgoing)
    atol = 2 * torch.finfo(dtype).eps * ref64.abs().max().item()
    return ref64, ref_same, atol


def _errors(out, refs):
    """(error of out, error of the same-dtype reference, atol), all against float64, max abs."""
    ref64, ref_same, atol = refs
    err = (out.double() - ref64).abs().max().item()
    ref_err = (ref_same.double() - ref64).abs().max().item()
    return err, ref_err, atol


def _run_and_check(impl, z, mask, w, outgoing, dtype, refs=None, **chunks):
    """``chunks``: ``chunk_size`` (pair rows per block) and, for the Triton path, ``hidden_chunk``."""
    out = IMPLS[impl](z.to(dtype), mask, _cast(w, dtype), outgoing, **chunks)
    assert out.shape == z.shape and out.dtype == dtype
    assert torch.isfinite(out).all()
    refs = refs if refs is not None else _references(z, mask, w, outgoing, dtype)
    err, ref_err, atol = _errors(out, refs)
    assert err <= 3 * ref_err + atol, f"err {err:.3e} vs reference err {ref_err:.3e} (atol {atol:.1e})"
    return out


@pytest.mark.parametrize("outgoing", [True, False], ids=["outgoing", "incoming"])
@pytest.mark.parametrize("mask_kind", ["none", "random", "padded"])
def test_reference_matches_transformers(outgoing, mask_kind):
    """The oracle against transformers' EsmFoldTriangleMultiplicativeUpdate in float64."""
    module = _hf_module(32, outgoing, seed=1)
    z, mask = _inputs(2, 17, 32, mask_kind, seed=2)
    with torch.no_grad():
        expected = module(z, mask)
        ours = triangle_multiplicative_update_reference(z, mask, _weights_of(module), outgoing)
        swapped = triangle_multiplicative_update_reference(z, mask, _weights_of(module), not outgoing)
    assert (ours - expected).abs().max().item() < 1e-12
    assert (swapped - expected).abs().max().item() > 1e-2 * expected.abs().max().item()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("outgoing", [True, False], ids=["outgoing", "incoming"])
@pytest.mark.parametrize("L, mask_kind", [(17, "none"), (37, "padded")])
def test_fp32(impl, outgoing, L, mask_kind, poisoned_empty):
    w = _weights_of(_hf_module(32, outgoing, seed=L))
    z, mask = _inputs(2, L, 32, mask_kind, seed=L + 1)
    _run_and_check(impl, z, mask, w, outgoing, torch.float32)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("outgoing", [True, False], ids=["outgoing", "incoming"])
def test_half(impl, dtype, outgoing, poisoned_empty):
    w = _random_weights(32, 32, seed=3)
    z, mask = _inputs(1, 19, 32, "random", seed=4)
    _run_and_check(impl, z, mask.bool(), w, outgoing, dtype)  # a bool mask works as 0/1


@pytest.mark.parametrize("impl", IMPLS)
def test_fp16_large_products_do_not_overflow(impl, poisoned_empty):
    """x = sum_k a b passes fp16's 65504 here: it must be kept wider until LN_out (transformers #47470)."""
    w = _random_weights(32, 32, seed=5, p_scale=400.0)
    z, _ = _inputs(1, 23, 32, "none", seed=6)
    refs = _references(z, None, w, True, torch.float16)
    zn = torch.nn.functional.layer_norm(z, (32,), w.ln_in_weight, w.ln_in_bias)
    a = torch.sigmoid(zn @ w.a_g_weight.T + w.a_g_bias) * (zn @ w.a_p_weight.T + w.a_p_bias)
    b = torch.sigmoid(zn @ w.b_g_weight.T + w.b_g_bias) * (zn @ w.b_p_weight.T + w.b_p_bias)
    assert a.abs().max() < 65504 and b.abs().max() < 65504
    assert torch.einsum("bikc,bjkc->bijc", a, b).abs().max() > 4 * 65504  # the regime is really reached
    _run_and_check(impl, z, None, w, True, torch.float16, refs=refs)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("outgoing", [True, False], ids=["outgoing", "incoming"])
def test_chunked_and_c_h_not_c_z(impl, outgoing, poisoned_empty):
    """c_hidden != c_z (x gets its own buffer) and chunked work, the last chunk partial: hidden channels
    on the Triton path (``hidden_chunk``), pair rows on the torch path (``chunk_size``)."""
    w = _random_weights(32, 48, seed=7)
    z, mask = _inputs(2, 17, 32, "padded", seed=8)
    chunks = {"hidden_chunk": 20} if impl == "triton" else {"chunk_size": 5}
    _run_and_check(impl, z, mask, w, outgoing, torch.float32, **chunks)


def test_triton_chunk_size_means_rows_not_channels(monkeypatch):
    """``chunk_size`` bounds pair rows, which the Triton kernels do not block by: it is accepted and
    changes nothing (the trunk passes its row chunk), while ``hidden_chunk`` launches the projection
    once per chunk of hidden channels."""
    launches = []
    kernel = tmu._trimul_project_kernel
    original = kernel.run
    monkeypatch.setattr(kernel, "run", lambda *args, **kwargs: launches.append(1) or original(*args, **kwargs))
    w = _cast(_random_weights(16, 24, seed=17), torch.float32)
    z, mask = _inputs(1, 9, 16, "random", seed=18)
    z = z.float()
    whole = triangle_multiplicative_update(z, mask, w)
    assert len(launches) == 1
    assert torch.equal(triangle_multiplicative_update(z, mask, w, chunk_size=4), whole)
    assert len(launches) == 2
    by_channels = triangle_multiplicative_update(z, mask, w, hidden_chunk=10)
    assert len(launches) == 2 + 3  # 24 channels in chunks of 10
    torch.testing.assert_close(by_channels, whole, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("arch", [90, 80])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_tiles_of_each_arch(arch, dtype, monkeypatch, poisoned_empty):
    """The tiles each GPU generation launches, run through the interpreter. c_z = 48 pads to 64, so
    sm_80's fp32 projection streams c_z in two 32-wide slices (the second partial) and sm_90's fp32
    output kernel makes its output channels in two 32-wide steps (the second partial)."""
    monkeypatch.setattr(tmu, "_launch_blocks", lambda dt, device, c_z: tmu._blocks(dt, arch, c_z))
    blk = tmu._blocks(dtype, arch, 48)
    if dtype == torch.float32:
        assert (blk.proj_k, blk.out_n) == ((64, 32) if arch == 90 else (32, 64))
    w = _random_weights(48, 40, seed=9)
    z, mask = _inputs(1, 17, 48, "padded", seed=10)
    for outgoing in (True, False):
        _run_and_check("triton", z, mask, w, outgoing, dtype)


@pytest.mark.parametrize("outgoing", [True, False], ids=["outgoing", "incoming"])
def test_torch_path_longer_chain(outgoing, poisoned_empty):
    """L=131 with a multi-block row loop and the default and a partial channel chunking (torch path only)."""
    w = _random_weights(32, 32, seed=9)
    z, mask = _inputs(1, 131, 32, "padded", seed=10)
    refs = _references(z, mask, w, outgoing, torch.float32)
    for chunk_size in (None, 12):
        _run_and_check("torch", z, mask, w, outgoing, torch.float32, chunk_size=chunk_size, refs=refs)


def test_swapped_direction_fails_the_check():
    """The tolerance is tight enough to tell Algorithm 11 from Algorithm 12."""
    w = _random_weights(32, 32, seed=11)
    z, mask = _inputs(1, 17, 32, "random", seed=12)
    refs = _references(z, mask, w, True, torch.float32)
    for impl in IMPLS.values():
        out = impl(z.float(), mask, _cast(w, torch.float32), False)  # incoming ...
        err, ref_err, atol = _errors(out, refs)  # ... checked as outgoing
        assert err > 100 * (3 * ref_err + atol)


def test_fp64_torch_path_is_exact():
    w = _random_weights(32, 32, seed=13)
    z, mask = _inputs(2, 17, 32, "random", seed=14)
    for outgoing in (True, False):
        ref = triangle_multiplicative_update_reference(z, mask, w, outgoing)
        out = triangle_multiplicative_update_torch(z, mask.bool(), w, outgoing, chunk_size=7)
        assert (out - ref).abs().max().item() < 1e-12 * ref.abs().max().item()


def test_input_errors():
    w = _random_weights(16, 16, seed=15)
    z, mask = _inputs(1, 17, 16, "random", seed=16)
    for impl in IMPLS.values():
        with pytest.raises(ValueError):
            impl(z.float(), mask[:, :5], _cast(w, torch.float32))
        with pytest.raises(ValueError):
            impl(z[:, :, :5].float(), None, _cast(w, torch.float32))
        with pytest.raises(ValueError):
            impl(z[..., :8].float(), None, _cast(w, torch.float32))
    with pytest.raises(TypeError):
        triangle_multiplicative_update(z, None, w)  # fp64 is for the torch path and the reference


@pytest.mark.parametrize("arch", [90, 80])
def test_aot_configs(arch):
    configs = aot_configs(arch)
    assert configs and all(isinstance(c, AOTConfig) for c in configs)
    for c in configs:  # what the launcher launches on that arch
        dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[c.name.split("_")[2]]
        blk = tmu._blocks(dt, arch, 128)
        if c.name.startswith("trimul_project"):
            assert (c.constexprs["BLOCK_P"], c.constexprs["BLOCK_H"], c.constexprs["BLOCK_K"], c.num_warps) == (
                blk.proj_p, blk.proj_h, blk.proj_k, blk.proj_warps)
        if c.name.startswith("trimul_output"):
            assert (c.constexprs["BLOCK_P"], c.constexprs["BLOCK_N"], c.num_warps) == (
                blk.out_p, blk.out_n, blk.out_warps)
    assert len({c.name for c in configs}) == len(configs)
    assert all(c.uses_dot for c in configs)
    for c in configs:
        params = set(c.signature) | set(c.constexprs)
        assert all(v.startswith(("*", "i", "fp")) for v in c.signature.values())
        assert "DOT_PRECISION" in params
        assert c.constexprs["DOT_PRECISION"] == ("tf32x3" if "fp32" in c.name else "tf32")


@pytest.mark.parametrize("outgoing", [True, False])
@pytest.mark.parametrize("mask_kind", ["random", None])
def test_torch_path_adds_into_z_in_place(outgoing, mask_kind, poisoned_empty):
    """``add_into_z``: z becomes z + update in place (row blocks of the view written only after they are
    read), float64-exact against the reference, for both directions, c_h != c_z and a partial last block."""
    w = _random_weights(24, 20, seed=21)
    z, mask = _inputs(2, 37, 24, "random", seed=22)
    mask = mask if mask_kind else None
    for chunk_size in (None, 5):
        expected = z + triangle_multiplicative_update_reference(z, mask, w, outgoing)
        zz = z.clone()
        out = triangle_multiplicative_update_torch(zz, mask, w, outgoing, chunk_size=chunk_size, add_into_z=True)
        assert out is zz
        assert (out - expected).abs().max().item() < 1e-12 * expected.abs().max().item()


# ---------------------------------------------------------------------------------------------------
# Gradients: gradcheck of the float64 paths; the Triton op's backward against the float64 oracle's.
# ---------------------------------------------------------------------------------------------------


def _leaves(z, w, dtype):
    return z.detach().to(dtype, copy=True).requires_grad_(True), [
        t.detach().to(dtype, copy=True).requires_grad_(True) for t in w
    ]


@pytest.mark.parametrize("mask_kind", ["none", "random"])
@pytest.mark.parametrize(
    "fn", [triangle_multiplicative_update_reference, triangle_multiplicative_update_torch], ids=["reference", "torch"]
)
def test_gradcheck_float64(fn, mask_kind):
    """Exact float64 gradients for z and all 16 weights, both directions, c_h != c_z, several row blocks."""
    z, mask = _inputs(2, 5, 3, mask_kind, seed=31)
    z, w = _leaves(z, _random_weights(3, 4, seed=32), torch.float64)
    for outgoing in (True, False):
        f = lambda z, *w: fn(z, mask, TriMulWeights(*w), outgoing, chunk_size=2)  # noqa: E731
        assert torch.autograd.gradcheck(f, (z, *w))


@pytest.mark.parametrize("outgoing", [True, False], ids=["outgoing", "incoming"])
def test_triton_gradients_match_fp64_reference(outgoing):
    """Backward through the Triton op (fp32) against the float64 oracle's gradients, per input: the
    error (max abs) is at most 3x the fp32 reference's plus 2 fp32 eps of the largest gradient."""
    z, mask = _inputs(2, 11, 16, "padded", seed=33)
    w = _random_weights(16, 12, seed=34)
    g_out = torch.randn(z.shape, generator=torch.Generator().manual_seed(35), dtype=torch.float64)

    def grads(fn, dtype):
        zz, ww = _leaves(z, w, dtype)
        out = fn(zz, mask, TriMulWeights(*ww), outgoing)
        return torch.autograd.grad(out, [zz, *ww], g_out.to(dtype))

    exact = grads(triangle_multiplicative_update_reference, torch.float64)
    same_dtype = grads(triangle_multiplicative_update_reference, torch.float32)
    got = grads(triangle_multiplicative_update, torch.float32)
    for name, g, e, s in zip(("z",) + TriMulWeights._fields, got, exact, same_dtype):
        err, ref_err = (g.double() - e).abs().max().item(), (s.double() - e).abs().max().item()
        atol = 2 * torch.finfo(torch.float32).eps * e.abs().max().item()
        assert err <= 3 * ref_err + atol, (name, err, ref_err, atol)


def test_torch_path_with_autograd():
    """With autograd recording the torch path computes the inference values out of place (same values),
    and the in-place ``add_into_z`` is a clear error instead of a silently wrong gradient."""
    z, mask = _inputs(2, 13, 8, "random", seed=36)
    w = _random_weights(8, 8, seed=37)
    zz, ww = _leaves(z, w, torch.float32)
    with torch.no_grad():
        inference = triangle_multiplicative_update_torch(zz, mask, TriMulWeights(*ww), chunk_size=5)
    recorded = triangle_multiplicative_update_torch(zz, mask, TriMulWeights(*ww), chunk_size=5)
    assert recorded.requires_grad and torch.equal(recorded.detach(), inference)
    with pytest.raises(RuntimeError, match="inference-only"):
        triangle_multiplicative_update_torch(zz, mask, TriMulWeights(*ww), add_into_z=True)
