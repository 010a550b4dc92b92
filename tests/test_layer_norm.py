"""layer_norm: Triton kernel (interpreted on CPU) and the torch path against a float64 reference."""

from __future__ import annotations

import warnings

import pytest
import torch

from fastfold_kernels import AOTConfig
from fastfold_kernels.layer_norm import (
    _MODEL_WIDTHS,
    _block_shape,
    _bwd_block_shape,
    _layer_norm_bwd_kernel,
    _layer_norm_fwd_kernel,
    aot_configs,
    layer_norm,
    layer_norm_reference,
    layer_norm_torch,
)
from _util import on_device, out_of_resources

layer_norm = on_device(layer_norm)

IMPLS = {"triton": layer_norm, "torch": layer_norm_torch}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]



def _params(C: int, dtype: torch.dtype, gen: torch.Generator, with_bias: bool = True):
    weight = (1.0 + 0.5 * torch.randn(C, generator=gen)).to(dtype)
    bias = (0.5 * torch.randn(C, generator=gen)).to(dtype) if with_bias else None
    return weight, bias


def _inputs(shape, dtype, gen):
    # std 3 around a per-row offset: the mean must really be subtracted.
    x = 3.0 * torch.randn(shape, generator=gen) + 2.0 * torch.randn(shape[:-1] + (1,), generator=gen)
    return x.to(dtype)


def _assert_close(out, ref64, ref_same, dtype):
    """Error against float64 within 3x the same-dtype reference's error plus two output ulps."""
    assert out.dtype == dtype and out.shape == ref64.shape
    assert torch.isfinite(out).all()
    err = (out.double() - ref64).abs().max().item()
    ref_err = (ref_same.double() - ref64).abs().max().item()
    atol = 2 * torch.finfo(dtype).eps * ref64.abs().max().item()
    assert err <= 3 * ref_err + atol, f"err {err:.3e} vs reference err {ref_err:.3e} (atol {atol:.1e})"


def _ref64(x, weight, bias, eps=1e-5, residual=None):
    d = lambda t: None if t is None else t.double()  # noqa: E731
    return layer_norm_reference(d(x), d(weight), d(bias), eps, d(residual))


def _one_width_per_shape(shape) -> list[int]:
    """One model width per distinct launch tile of ``shape`` (the tiles are the same on every arch)."""
    widths = {}
    for C in _MODEL_WIDTHS:
        widths.setdefault(shape(C)[:2], C)  # (BLOCK_R, BLOCK_C); warps mean nothing to the interpreter
    return list(widths.values())


def _rows(C: int, shape) -> int:
    """Rows spanning two full row tiles and a ragged third."""
    return 2 * shape(C)[0] + 3


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("C", [32, *_one_width_per_shape(_block_shape)])
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
def test_layer_norm_widths(impl, dtype, C, with_residual, poisoned_empty):
    """Every forward tile the model launches (one width each; C = 32 besides), with and without the
    residual; with it, the sum is x + residual rounded to the dtype, bit for bit."""
    rows = _rows(C, _block_shape)
    gen = torch.Generator().manual_seed(C + rows)
    x = _inputs((rows, C), dtype, gen)
    weight, bias = _params(C, dtype, gen)
    if not with_residual:
        out = IMPLS[impl](x, weight, bias)
        _assert_close(out, _ref64(x, weight, bias), layer_norm_reference(x, weight, bias), dtype)
        return
    residual = _inputs((rows, C), dtype, gen)
    y, s = IMPLS[impl](x, weight, bias, residual=residual)
    assert s.dtype == dtype and torch.equal(s, x + residual)
    y_ref, _ = layer_norm_reference(x, weight, bias, residual=residual)
    _assert_close(y, _ref64(x + residual, weight, bias), y_ref, dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_layer_norm_no_bias_eps_and_batch_dims(impl, dtype, poisoned_empty):
    gen = torch.Generator().manual_seed(7)
    # Small-variance rows make eps matter.
    x = (0.05 * _inputs((2, 5, 3, 48), torch.float32, gen)).to(dtype)
    weight, _ = _params(48, dtype, gen)
    out = IMPLS[impl](x, weight, None, eps=1e-3)
    _assert_close(out, _ref64(x, weight, None, 1e-3), layer_norm_reference(x, weight, None, 1e-3), dtype)


def _strided_views(gen, dtype):
    base = _inputs((6, 9, 200), dtype, gen)
    yield "row_stride", base[:, :, 7:135]  # rows 200 apart, not 128
    yield "every_other_row", base[:, ::2, 10:138]  # two uncollapsible leading dims
    yield "transposed_leading", base[:, :, :128].transpose(0, 1)  # leading dims in swapped order
    yield "three_strided_dims", base.view(2, 3, 9, 200)[:, :, ::3, 50:178]  # needs the copy fallback


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_layer_norm_strided_views(impl, dtype, poisoned_empty):
    gen = torch.Generator().manual_seed(3)
    weight, bias = _params(128, dtype, gen)
    for name, x in _strided_views(gen, dtype):
        assert not x.is_contiguous() and x.stride(-1) == 1, name
        out = IMPLS[impl](x, weight, bias)
        assert out.shape == x.shape, name
        _assert_close(out, _ref64(x, weight, bias), layer_norm_reference(x, weight, bias), dtype)
        residual = _inputs(x.shape, dtype, gen).transpose(-2, -3).contiguous().transpose(-2, -3)
        y, s = IMPLS[impl](x, weight, bias, residual=residual)
        assert torch.equal(s, x + residual), name
        _assert_close(y, _ref64(x + residual, weight, bias), layer_norm_reference(x + residual, weight, bias), dtype)


def test_layer_norm_fp64_torch_path():
    gen = torch.Generator().manual_seed(11)
    x = _inputs((17, 320), torch.float64, gen)
    weight, bias = _params(320, torch.float64, gen)
    out = layer_norm_torch(x, weight, bias)
    ref = layer_norm_reference(x, weight, bias)
    assert out.dtype == torch.float64
    assert (out - ref).abs().max().item() < 1e-12
    with pytest.raises(TypeError, match="fp16/bf16/fp32"):
        layer_norm(x, weight, bias)


def test_layer_norm_reference_matches_torch_module():
    """The oracle itself agrees with nn.LayerNorm in float64."""
    gen = torch.Generator().manual_seed(5)
    x = _inputs((4, 37, 96), torch.float64, gen)
    ln = torch.nn.LayerNorm(96, eps=1e-5).double()
    with torch.no_grad():
        ln.weight.copy_(1 + 0.3 * torch.randn(96, generator=gen))
        ln.bias.copy_(0.3 * torch.randn(96, generator=gen))
        expected = ln(x)
    assert (layer_norm_reference(x, ln.weight, ln.bias) - expected).abs().max().item() < 1e-12


def test_layer_norm_shape_errors():
    x = torch.randn(3, 16)
    with pytest.raises(ValueError):
        layer_norm(x, torch.ones(8), None)
    with pytest.raises(ValueError):
        layer_norm(x, torch.ones(16), None, residual=torch.randn(3, 8))


def test_layer_norm_aot_configs():
    configs = aot_configs()
    assert configs and all(isinstance(c, AOTConfig) for c in configs)
    names = {c.name for c in configs}
    assert len(names) == len(configs)
    served = set()
    for c in configs:
        bwd = c.name.startswith("layer_norm_bwd_")
        assert c.fn is (_layer_norm_bwd_kernel if bwd else _layer_norm_fwd_kernel), c.name
        required = {"X", "DY", "DX", "DW", "Mean", "Rstd", "C"} if bwd else {"X", "W", "Y", "C", "eps"}
        assert set(c.signature) | set(c.constexprs) >= required | {"BLOCK_C"}, c.name
        shape = _bwd_block_shape if bwd else _block_shape
        widths = [int(w) for w in c.name.split("_C")[1].split("_")[0].split("-")]
        for width in widths:  # each width named is launched with exactly this config's tiles
            assert shape(width) == (c.constexprs["BLOCK_R"], c.constexprs["BLOCK_C"], c.num_warps)
            variant = c.constexprs["HAS_DS"] if bwd else c.constexprs["HAS_RES"]
            served.add((bwd, width, c.signature["X"], variant))
    # ESM-2 widths, trunk c_s and c_z, every dtype, with and without the residual, forward and backward
    for width in (128, 320, 480, 640, 1024, 1280, 2560, 5120):
        for ptr in ("*fp32", "*fp16", "*bf16"):
            for bwd in (False, True):
                assert {(bwd, width, ptr, False), (bwd, width, ptr, True)} <= served, (bwd, width, ptr)
    assert {"layer_norm_C128_fp32", "layer_norm_C2560_fp16_res", "layer_norm_C640-1024_bf16"} <= names
    assert {"layer_norm_bwd_C128_fp32", "layer_norm_bwd_C5120_bf16_ds"} <= names


# --------------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------------
def _leaves(tensors, dtype=None):
    """Fresh leaves requiring grad (None stays None), optionally cast."""
    return [None if t is None else t.detach().to(dtype or t.dtype).requires_grad_() for t in tensors]


def _grads(fn, inputs, upstream, eps=1e-5):
    """Gradients of sum(out * upstream) (both outputs with a residual) for every non-None input."""
    x, weight, bias, residual = inputs
    out = fn(x, weight, bias, eps, residual=residual)
    outs = out if isinstance(out, tuple) else (out,)
    assert all(o.grad_fn is not None for o in outs)
    loss = sum((o.double() * g).sum() for o, g in zip(outs, upstream))
    return torch.autograd.grad(loss, [t for t in inputs if t is not None])


@pytest.mark.parametrize("impl", ["reference", "torch"])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("with_residual", [False, True])
def test_layer_norm_gradcheck_fp64(impl, with_bias, with_residual):
    fn = {"reference": layer_norm_reference, "torch": layer_norm_torch}[impl]
    gen = torch.Generator().manual_seed(13)
    x = _inputs((3, 5, 7), torch.float64, gen)
    weight, bias = _params(7, torch.float64, gen, with_bias)
    residual = _inputs((3, 5, 7), torch.float64, gen) if with_residual else None
    inputs = _leaves((x, weight, bias, residual))
    present = [t for t in inputs if t is not None]

    def f(*args):  # the present inputs back in their places
        it = iter(args)
        x, weight, bias, residual = (None if t is None else next(it) for t in inputs)
        return fn(x, weight, bias, 1e-5, residual=residual)

    assert torch.autograd.gradcheck(f, present)


def _check_grads(got, exact, same_dtype, names):
    """Every gradient within 3x the same-dtype reference's error (vs float64) plus two ulps of its max."""
    for name, g, g64, g_ref in zip(names, got, exact, same_dtype):
        assert g.shape == g64.shape and torch.isfinite(g).all(), name
        assert g64.abs().max() > 0, name  # a comparison that could fail
        err = (g.double() - g64).abs().max().item()
        ref_err = (g_ref.double() - g64).abs().max().item()
        atol = 2 * torch.finfo(g.dtype).eps * g64.abs().max().item()
        assert err <= 3 * ref_err + atol, f"{name}: err {err:.3e} vs reference err {ref_err:.3e} (atol {atol:.1e})"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("C", [37, *_one_width_per_shape(_bwd_block_shape)])
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
def test_layer_norm_triton_gradients(dtype, C, with_residual, poisoned_empty):
    """Every backward tile the model launches (one width each; C = 37 besides), with and without the
    residual, through the autograd forward (which also stores the row statistics)."""
    rows = _rows(C, _bwd_block_shape)
    gen = torch.Generator().manual_seed(C * rows)
    x = _inputs((rows, C), dtype, gen)
    weight, bias = _params(C, dtype, gen)
    residual = _inputs((rows, C), dtype, gen) if with_residual else None
    upstream = [3.0 * torch.randn(rows, C, generator=gen, dtype=torch.float64) for _ in range(2)]
    raw = (x, weight, bias, residual)
    got = _grads(layer_norm, _leaves(raw), upstream)
    exact = _grads(layer_norm_reference, _leaves(raw, torch.float64), upstream)
    same_dtype = _grads(layer_norm_reference, _leaves(raw), upstream)
    assert all(g.dtype == dtype for g in got)
    _check_grads(got, exact, same_dtype, ["x", "weight", "bias", "residual"][: len(got)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_layer_norm_triton_gradients_strided_no_bias(dtype, poisoned_empty):
    """A strided x (rows 200 apart), no bias, and more row blocks than backward programs."""
    gen = torch.Generator().manual_seed(29)
    base = _inputs((3, 37, 200), dtype, gen).requires_grad_()
    x = base[:, :, 7:135]  # a strided view: gradients flow through it into base
    weight, _ = _params(128, dtype, gen)
    upstream = [3.0 * torch.randn(x.shape, generator=gen, dtype=torch.float64)]
    got = _grads(layer_norm, [x, *_leaves((weight,)), None, None], upstream)
    exact = _grads(layer_norm_reference, [*_leaves((x, weight), torch.float64), None, None], upstream)
    same_dtype = _grads(layer_norm_reference, [*_leaves((x, weight)), None, None], upstream)
    _check_grads(got, exact, same_dtype, ["x", "weight"])


def test_layer_norm_triton_gradient_of_the_sum_only():
    """With a residual, a loss on s alone: x and residual get exactly ds, weight and bias zero."""
    gen = torch.Generator().manual_seed(31)
    x, residual = _leaves((_inputs((17, 37), torch.float32, gen), _inputs((17, 37), torch.float32, gen)))
    weight, bias = _leaves(_params(37, torch.float32, gen))
    _, s = layer_norm(x, weight, bias, residual=residual)
    ds = torch.randn(17, 37, generator=gen)
    s.backward(ds)
    assert torch.equal(x.grad, ds) and torch.equal(residual.grad, ds)
    assert torch.equal(weight.grad, torch.zeros(37)) and torch.equal(bias.grad, torch.zeros(37))


def test_layer_norm_no_grad_forward_is_unchanged():
    """The autograd forward (which also stores mean/rstd) gives the no-grad forward's bits."""
    gen = torch.Generator().manual_seed(37)
    x = _inputs((17, 320), torch.bfloat16, gen)
    weight, bias = _params(320, torch.bfloat16, gen)
    with torch.no_grad():
        expected = layer_norm(x, weight, bias)
    got = layer_norm(*_leaves((x, weight, bias)))
    assert got.requires_grad and torch.equal(got.detach(), expected)


@pytest.mark.parametrize("impl", IMPLS)
def test_layer_norm_residual_is_x(impl):
    """``residual=x`` (the same tensor) is still a residual: s = 2x."""
    gen = torch.Generator().manual_seed(41)
    x = _inputs((17, 37), torch.float32, gen)
    weight, bias = _params(37, torch.float32, gen)
    y, s = IMPLS[impl](x, weight, bias, residual=x)
    assert torch.equal(s, x + x)
    _assert_close(y, _ref64(x + x, weight, bias), layer_norm_reference(x + x, weight, bias), torch.float32)


def test_layer_norm_triton_double_backward_is_a_clear_error():
    gen = torch.Generator().manual_seed(43)
    x, weight, bias = _leaves((_inputs((5, 16), torch.float32, gen), *_params(16, torch.float32, gen)))
    (g,) = torch.autograd.grad((layer_norm(x, weight, bias) ** 2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()


def test_layer_norm_out_of_resources_falls_back_once(monkeypatch):
    """Forward and backward out of resources at their tiles: retried once with half the rows (a
    warning each), the same values and gradients, and the fallback remembered."""
    gen = torch.Generator().manual_seed(47)
    C, rows = 128, 70
    x = _inputs((rows, C), torch.float32, gen)
    weight, bias = _params(C, torch.float32, gen)
    upstream = [torch.randn(rows, C, generator=gen, dtype=torch.float64)]
    expected = _grads(layer_norm, _leaves((x, weight, bias, None)), upstream)
    fwd_r, bwd_r = _block_shape(C)[0], _bwd_block_shape(C)[0]
    raised_fwd = out_of_resources(monkeypatch, _layer_norm_fwd_kernel, lambda kw: kw["BLOCK_R"] == fwd_r)
    raised_bwd = out_of_resources(monkeypatch, _layer_norm_bwd_kernel, lambda kw: kw["BLOCK_R"] == bwd_r)
    with pytest.warns(RuntimeWarning) as record:
        got = _grads(layer_norm, _leaves((x, weight, bias, None)), upstream)
    assert {"layer_norm", "layer_norm_bwd"} == {str(w.message).split(":")[0] for w in record}
    assert ([kw["BLOCK_R"] for kw in raised_fwd], [kw["BLOCK_R"] for kw in raised_bwd]) == ([fwd_r], [bwd_r])
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = _grads(layer_norm, _leaves((x, weight, bias, None)), upstream)
    assert len(raised_fwd) == len(raised_bwd) == 1  # straight to the remembered fallbacks
    assert all(torch.equal(a, g) for a, g in zip(again, got))


def test_layer_norm_out_of_resources_twice_is_an_error(monkeypatch):
    """Both the tile and its half out of resources: a RuntimeError naming the op; at one row per
    program there is no smaller tile, so the first failure is the error."""
    gen = torch.Generator().manual_seed(53)
    raised = out_of_resources(monkeypatch, _layer_norm_fwd_kernel, lambda kw: True)
    x = _inputs((5, 128), torch.float32, gen)
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="layer_norm"):
        layer_norm(x, *_params(128, torch.float32, gen))
    assert [kw["BLOCK_R"] for kw in raised] == [32, 16]
    x = _inputs((3, 5120), torch.float32, gen)
    with pytest.raises(RuntimeError, match="layer_norm: out of GPU resources at its smallest"):
        layer_norm(x, *_params(5120, torch.float32, gen))
