"""Triangle multiplicative update (Algorithms 11/12): Triton kernels (interpreted on CPU) and the torch
path against a float64 evaluation of the reference, which itself matches transformers' module."""

from __future__ import annotations

import contextlib
import warnings
from types import SimpleNamespace

import pytest
import torch
from _util import on_device, out_of_resources, randomize_
from torch.utils._python_dispatch import TorchDispatchMode

import fastfold_kernels.triangle_multiplicative_update as tmu
import fastfold_kernels.utils as kutils
from fastfold_kernels import AOTConfig
from fastfold_kernels.utils import FP32_DOT_PRECISIONS, aot_precisions, emulate_arch
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


@contextlib.contextmanager
def _matmul_precision(setting: str):
    """torch.get_float32_matmul_precision() == ``setting`` within the block, restored after."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(setting)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


_TORCH_SETTING = {prec: setting for setting, prec in FP32_DOT_PRECISIONS.items()}
_CASE_C_Z, _CASE_C_H = 48, 20  # pad to 64 and 32: ragged channel edges in every tile


def _tiles(blk) -> tuple:
    """The tiles of a ``_Blocks`` that the interpreter sees (not warps and stages)."""
    return tuple(v for k, v in blk._asdict().items() if not k.endswith(("_warps", "_stages")))


def _launch_config_cases() -> list[tuple[torch.dtype, str, int, int]]:
    """(dtype, dot precision, arch, L): one per distinct set of tiles the CUDA launcher picks on sm_90
    and sm_80, over dtypes and fp32 precisions (warps, stages and the precision itself change nothing
    under the interpreter, so they make no case of their own). L is 3 past the product tile (2x2
    tiles, ragged) in the first case of each (dtype, product M x N tile), else 13: the projection and output
    tiles run over the L^2 positions, which 13^2 = 169 already spans with a ragged edge."""
    cases, products = {}, set()
    for arch in (90, 80):
        for dt in (torch.float32, torch.bfloat16, torch.float16):
            for prec in aot_precisions(dt):
                blk = tmu._blocks(dt, prec, arch, _CASE_C_Z)
                if (dt, _tiles(blk)) not in cases:
                    new_product = (dt, blk.prod_m, blk.prod_n) not in products
                    products.add((dt, blk.prod_m, blk.prod_n))
                    cases[dt, _tiles(blk)] = (dt, prec, arch, blk.prod_m + 3 if new_product else 13)
    return list(cases.values())


@pytest.mark.parametrize("dtype, prec, arch, L", _launch_config_cases(), ids=lambda v: str(v).replace("torch.", ""))
def test_triton_every_launch_config(dtype, prec, arch, L, poisoned_empty):
    """Each distinct CUDA launch configuration, run through the interpreter under ``emulate_arch``
    (c_z = 48 and c_h = 20 pad to 64 and 32). One call returns the update (padded mask, outgoing,
    all hidden channels at once, at L); the other adds it into z (no mask, incoming, hidden channels
    in chunks of 8, the last partial, at L = 11), so both projection variants, both product stride
    orders and both output variants run in every configuration."""
    w = _random_weights(_CASE_C_Z, _CASE_C_H, seed=9)
    z, mask = _inputs(1, L, _CASE_C_Z, "padded", seed=10)
    z_add, _ = _inputs(1, 11, _CASE_C_Z, "none", seed=11)
    with emulate_arch(arch), _matmul_precision(_TORCH_SETTING.get(prec, "highest")):
        _run_and_check("triton", z, mask, w, True, dtype)
        _check_added_into_z(z_add, None, w, False, dtype, hidden_chunk=8)


def _check_added_into_z(z, mask, w, outgoing, dtype, **chunks):
    """``add_into_z``: the call returns z itself, now z + update within the same tolerance as the update
    (against float64 z + update; the same-dtype reference adds the rounded update in the dtype)."""
    ref64, ref_same, _ = _references(z, mask, w, outgoing, dtype)
    zz = z.to(dtype)
    sum64, sum_same = z.to(dtype).double() + ref64, zz + ref_same
    refs = (sum64, sum_same, 2 * torch.finfo(dtype).eps * sum64.abs().max().item())
    with torch.no_grad():
        out = triangle_multiplicative_update(zz, mask, _cast(w, dtype), outgoing, add_into_z=True, **chunks)
    assert out is zz and torch.isfinite(out).all()
    err, ref_err, atol = _errors(out, refs)
    assert err <= 3 * ref_err + atol, f"err {err:.3e} vs reference err {ref_err:.3e} (atol {atol:.1e})"
    return out


def _capture_launches(monkeypatch) -> list[tuple[str, dict]]:
    """(kernel name, launch keyword arguments) of every launch of the three kernels, still run."""
    launches = []
    for name in ("_trimul_project_kernel", "_trimul_product_kernel", "_trimul_output_kernel"):
        kernel = getattr(tmu, name)

        def run(*args, _name=name, _run=kernel.run, **kwargs):
            launches.append((_name, kwargs))
            return _run(*args, **kwargs)

        monkeypatch.setattr(kernel, "run", run)
    return launches


@pytest.mark.parametrize("setting", list(FP32_DOT_PRECISIONS))
def test_triton_dot_precision_follows_torch(setting, monkeypatch):
    """fp32 launches pass the DOT_PRECISION ``torch.get_float32_matmul_precision()`` maps to, with that
    precision's tiles; bf16 launches pass "tf32" under every setting. The setting is restored after."""
    launches = _capture_launches(monkeypatch)
    w = _random_weights(16, 16, seed=41)
    z, mask = _inputs(1, 9, 16, "random", seed=42)
    before = torch.get_float32_matmul_precision()
    with _matmul_precision(setting):
        for dtype, expected in ((torch.float32, FP32_DOT_PRECISIONS[setting]), (torch.bfloat16, "tf32")):
            launches.clear()
            triangle_multiplicative_update(z.to(dtype), mask, _cast(w, dtype))
            blk = tmu._blocks(dtype, expected, None, 16)
            assert sorted(name for name, _ in launches) == sorted(
                ["_trimul_project_kernel", "_trimul_product_kernel", "_trimul_output_kernel"])
            for name, kwargs in launches:
                assert kwargs["DOT_PRECISION"] == expected, name
            (proj,) = [kw for name, kw in launches if name == "_trimul_project_kernel"]
            (outk,) = [kw for name, kw in launches if name == "_trimul_output_kernel"]
            assert (proj["BLOCK_P"], proj["BLOCK_K"], outk["BLOCK_P"], outk["BLOCK_N"]) == (
                blk.proj_p, blk.proj_k, blk.out_p, blk.out_n)
    assert torch.get_float32_matmul_precision() == before


def test_triton_out_of_resources_falls_back_once(monkeypatch):
    """A product launch out of resources is retried once with half its tiles (a warning), gives the
    same result, and later launches go to the fallback directly; the output kernel out of resources
    at every size is a RuntimeError naming it."""
    w = _cast(_random_weights(16, 16, seed=43), torch.float32)
    z, mask = _inputs(1, 21, 16, "random", seed=44)
    z = z.float()
    expected = triangle_multiplicative_update(z, mask, w)
    big = tmu._blocks(torch.float32, kutils.dot_precision(torch.float32), None, 16).prod_m
    raised = out_of_resources(monkeypatch, tmu._trimul_product_kernel, lambda kw: kw["BLOCK_M"] == big)
    with pytest.warns(RuntimeWarning, match="trimul_product"):
        got = triangle_multiplicative_update(z, mask, w)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert len(raised) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(triangle_multiplicative_update(z, mask, w), expected, rtol=1e-5, atol=1e-5)
    assert len(raised) == 1  # remembered: the failing configuration is not tried again
    out_of_resources(monkeypatch, tmu._trimul_output_kernel, lambda kw: True)
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="trimul_output"):
        triangle_multiplicative_update(z, mask, w)


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
    """The configs are the launches: per dtype and fp32 precision, the tiles ``_blocks`` gives the
    launcher, every kernel variant (projection with/without mask, product, output returning/adding)."""
    configs = aot_configs(arch)
    assert configs and all(isinstance(c, AOTConfig) for c in configs)
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    for c in configs:
        tdt = c.name.split("_")[2]
        dt = dtypes[tdt]
        prec = c.name.split("_")[3] if dt == torch.float32 else "tf32"
        assert c.constexprs["DOT_PRECISION"] == prec and c.constexprs["DOT_UPCAST"] is False
        blk = tmu._blocks(dt, prec, arch, 128)
        if c.name.startswith("trimul_project"):
            assert (c.constexprs["BLOCK_P"], c.constexprs["BLOCK_H"], c.constexprs["BLOCK_K"], c.num_warps) == (
                blk.proj_p, blk.proj_h, blk.proj_k, blk.proj_warps)
        if c.name.startswith("trimul_product"):
            assert (c.constexprs["BLOCK_M"], c.constexprs["BLOCK_N"], c.constexprs["BLOCK_K"], c.num_warps) == (
                blk.prod_m, blk.prod_n, blk.prod_k, blk.prod_warps)
        if c.name.startswith("trimul_output"):
            assert (c.constexprs["BLOCK_P"], c.constexprs["BLOCK_N"], c.num_warps) == (
                blk.out_p, blk.out_n, blk.out_warps)
            assert c.constexprs["ADD_Z"] == c.name.endswith("_add")
    names = {c.name for c in configs}
    assert len(names) == len(configs)
    for tag in ("fp32_ieee", "fp32_tf32x3", "fp32_tf32", "fp16", "bf16"):
        variants = ("project_{}", "project_{}_mask", "product_{}", "output_{}", "output_{}_add")
        assert {"trimul_" + v.format(tag) for v in variants} <= names, tag
    assert len(configs) == 5 * 5
    assert all(c.uses_dot for c in configs)
    for c in configs:
        assert all(v.startswith(("*", "i", "fp")) for v in c.signature.values())


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


@pytest.mark.parametrize("outgoing, mask_kind", [(True, "random"), (False, "none")], ids=["outgoing", "incoming"])
def test_triton_adds_into_z_in_place(outgoing, mask_kind, poisoned_empty):
    """The Triton ``add_into_z`` (default hidden chunk: c_h // 8 = 2 channels, 8 chunks; odd L) equals
    z + the update of the out-of-place call, both within the float64 tolerance of z + update."""
    w = _random_weights(24, 16, seed=23)
    z, mask = _inputs(1, 37, 24, mask_kind, seed=24)
    out = _check_added_into_z(z, mask, w, outgoing, torch.float32)
    separate = z.float() + triangle_multiplicative_update(z.float(), mask, _cast(w, torch.float32), outgoing)
    torch.testing.assert_close(out, separate, rtol=1e-5, atol=1e-5)
    assert tmu.triangle_multiplicative_update.supports_add_into_z


def test_triton_add_into_z_strided_z_and_autograd():
    """A non-contiguous z is updated in place too (computed in a contiguous copy, copied back); under
    autograd add_into_z is a clear error and z is left alone."""
    w = _cast(_random_weights(16, 16, seed=25), torch.float32)
    z, mask = _inputs(1, 11, 16, "random", seed=26)
    zt = z.float().transpose(1, 2).contiguous().transpose(1, 2)  # z's values, not contiguous
    expected = zt + triangle_multiplicative_update(zt, mask, w, False)
    with torch.no_grad():
        out = triangle_multiplicative_update(zt, mask, w, False, add_into_z=True)
    assert out is zt and not zt.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    leaf = z.float().requires_grad_()
    before = leaf.detach().clone()
    with pytest.raises(RuntimeError, match="inference-only"):
        triangle_multiplicative_update(leaf, mask, w, add_into_z=True)
    assert torch.equal(leaf.detach(), before)


class _AllocatedBytes(TorchDispatchMode):
    """Sums the bytes of every storage an op creates (outputs whose storage no input owns): an upper
    bound of the extra memory a call holds at its peak."""

    def __init__(self):
        super().__init__()
        self.bytes, self._seen = 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        owned = {t.untyped_storage().data_ptr() for t in torch.utils._pytree.tree_leaves((args, kwargs))
                 if isinstance(t, torch.Tensor)}  # fmt: skip
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                ptr = t.untyped_storage().data_ptr()
                if ptr not in owned and ptr not in self._seen:
                    self._seen.add(ptr)
                    self.bytes += t.untyped_storage().nbytes()
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_triton_add_into_z_memory(dtype):
    """add_into_z allocates x (the one pair-sized buffer: B L^2 c_h, fp32 for fp16 z) and a, b for
    c_h // 8 channels (2 B L^2 (c_h // 8) in z's dtype), plus small vectors (the fp32 LN_out weights)."""
    B, L, c_z, c_h = 1, 37, 16, 24
    w = _cast(_random_weights(c_z, c_h, seed=27), dtype)
    z, mask = _inputs(B, L, c_z, "random", seed=28)
    z, mask = z.to(dtype), mask.float()
    x_bytes = B * L * L * c_h * 4
    ab_bytes = 2 * B * L * L * (c_h // 8) * dtype.itemsize
    small = 2 * c_h * 4
    with torch.no_grad(), _AllocatedBytes() as mode:
        triangle_multiplicative_update(z, mask, w, add_into_z=True)
    assert x_bytes <= mode.bytes <= x_bytes + ab_bytes + small, (mode.bytes, x_bytes, ab_bytes)
    assert ab_bytes <= x_bytes // 4


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
