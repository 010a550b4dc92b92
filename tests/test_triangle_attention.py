"""triangle_attention: Triton kernel and chunked torch path against a float64 reference."""

from __future__ import annotations

import pytest
import torch

import fastfold_kernels.triangle_attention as tri
from fastfold_kernels.triangle_attention import (
    aot_configs,
    triangle_attention,
    triangle_attention_reference,
    triangle_attention_torch,
)
from fastfold_kernels import utils
from _util import LaunchRecorder, max_rel_err, on_device, poison_

triangle_attention = on_device(triangle_attention)

# Error floor added to 3x the same-dtype reference's error (relative to max |out|).
ATOL = {torch.float32: 2e-6, torch.bfloat16: 4e-3, torch.float16: 5e-4}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def make_inputs(B, I, J, H, D, std=3.0, bias_std=3.0, seed=0):
    """q, k, v: non-contiguous [B, I, J, H, D] views of one projection; bias: a [B, H, J, J] view of
    a [B, J, J, H] linear output (the model's layout); all with std > 1."""
    gen = torch.Generator().manual_seed(seed)
    proj = torch.randn(B, I, J, 3 * H * D, generator=gen) * std
    q, k, v = proj.view(B, I, J, 3, H, D).unbind(3)
    bias = (torch.randn(B, J, J, H, generator=gen) * bias_std).permute(0, 3, 1, 2)
    return q, k, v, bias


def make_mask(B, I, J, seed=0):
    """[B, I, J] bool with random holes and, when there are several rows, one fully masked row."""
    gen = torch.Generator().manual_seed(seed + 1)
    mask = torch.rand(B, I, J, generator=gen) > 0.3
    if I > 1:
        mask[0, 0] = False
    return mask


def live_rows(mask, B, I):
    """Rows with at least one key: fully masked rows are padding and are not compared."""
    return torch.ones(B, I, dtype=torch.bool) if mask is None else mask.any(-1)


def check_against_fp64(fn, B, I, J, H, D, dtype, masked, seed):
    q, k, v, bias = make_inputs(B, I, J, H, D, seed=seed)
    mask = make_mask(B, I, J, seed) if masked else None
    exact = triangle_attention_reference(q.double(), k.double(), v.double(), bias.double(), mask)
    args = [t.to(dtype) for t in (q, k, v, bias)]
    same_dtype = triangle_attention_reference(*args, mask)
    out = fn(*args, mask)
    assert out.dtype == dtype and out.shape == (B, I, J, H, D)
    assert torch.isfinite(out).all()  # fully masked rows included
    live = live_rows(mask, B, I)
    err, ref_err = max_rel_err(out[live], exact[live]), max_rel_err(same_dtype[live], exact[live])
    assert err <= 3 * ref_err + ATOL[dtype], (err, ref_err)
    return err, ref_err


# (B, I, J, H, D): ESMFold's trunk case, odd small heads, a wide head.
SHAPES = [(1, 2, 23, 4, 32), (2, 2, 17, 2, 16), (1, 2, 37, 2, 64)]


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_fp64_reference(shape, dtype, masked):
    check_against_fp64(triangle_attention, *shape, dtype, masked, seed=sum(shape))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_sequence_attention_case(dtype):
    """ESMFold's pair-biased sequence attention: one row (I = 1), 32 heads of 32."""
    check_against_fp64(triangle_attention, 1, 1, 17, 32, 32, dtype, True, seed=11)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [(2, 1, 37, 32, 32)], ids=lambda s: "x".join(map(str, s)))
def test_torch_matches_fp64_reference(shape, dtype, masked):
    check_against_fp64(triangle_attention_torch, *shape, dtype, masked, seed=sum(shape) + 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_writes_every_element_of_out(dtype):
    B, I, J, H, D = 1, 2, 23, 4, 32
    q, k, v, bias = (t.to(dtype) for t in make_inputs(B, I, J, H, D, seed=12))
    mask = make_mask(B, I, J, 12)
    out = poison_(torch.empty(B, I, J, H, D, dtype=dtype))
    got = triangle_attention(q, k, v, bias, mask, out=out)
    assert got.data_ptr() == out.data_ptr()
    assert torch.isfinite(out).all()
    live = live_rows(mask, B, I)
    exact = triangle_attention_reference(q.double(), k.double(), v.double(), bias.double(), mask)
    same_dtype = triangle_attention_reference(q, k, v, bias, mask)
    assert max_rel_err(out[live], exact[live]) <= 3 * max_rel_err(same_dtype[live], exact[live]) + ATOL[dtype]


def test_torch_chunking_matches_unchunked(monkeypatch):
    B, I, J, H, D = 2, 5, 37, 4, 32
    q, k, v, bias = make_inputs(B, I, J, H, D, seed=13)
    mask = make_mask(B, I, J, 13)
    for m in (None, mask):
        whole = triangle_attention_torch(q, k, v, bias, m, chunk_size=I)
        for chunk in (1, 3):
            chunked = triangle_attention_torch(q, k, v, bias, m, chunk_size=chunk)
            torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)
        # The automatic chunk follows the score budget: force several chunks through it.
        monkeypatch.setattr(tri, "_TORCH_SCORE_BUDGET_BYTES", 2 * H * J * J * 4)
        assert tri._auto_chunk(I, H, J) == 2
        torch.testing.assert_close(triangle_attention_torch(q, k, v, bias, m), whole, rtol=1e-6, atol=1e-6)
        monkeypatch.undo()


@pytest.mark.parametrize(
    "fn", [triangle_attention, triangle_attention_reference], ids=["kernel", "reference"]
)
def test_chunk_size_is_accepted_and_ignored(fn):
    """chunk_size (pair rows per block of work) matters only to the torch path's memory."""
    B, I, J, H, D = 1, 3, 17, 2, 16
    q, k, v, bias = make_inputs(B, I, J, H, D, seed=18)
    mask = make_mask(B, I, J, 18)
    assert torch.equal(fn(q, k, v, bias, mask, chunk_size=1), fn(q, k, v, bias, mask))


@pytest.mark.parametrize("fn", [triangle_attention, triangle_attention_torch], ids=["kernel", "torch"])
def test_all_ones_mask_equals_no_mask(fn):
    B, I, J, H, D = 1, 2, 17, 2, 16
    q, k, v, bias = make_inputs(B, I, J, H, D, seed=17)
    torch.testing.assert_close(fn(q, k, v, bias, torch.ones(B, I, J)), fn(q, k, v, bias), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fn", [triangle_attention, triangle_attention_torch], ids=["kernel", "torch"])
def test_masked_keys_are_dropped_and_float_mask_equals_bool(fn):
    """A row's output equals attention over only its unmasked keys (with the matching bias columns)."""
    B, I, J, H, D = 1, 2, 17, 2, 16
    q, k, v, bias = make_inputs(B, I, J, H, D, std=1.5, seed=14)
    mask = torch.ones(B, I, J, dtype=torch.bool)
    keep = torch.tensor([j % 3 != 1 for j in range(J)])
    mask[0, 1] = keep
    out = fn(q, k, v, bias, mask)
    torch.testing.assert_close(fn(q, k, v, bias, mask.float()), out, rtol=0, atol=0)
    # Keys restricted, queries kept: compute row 1 by hand in float64.
    qd, kd, vd = q[0, 1].double(), k[0, 1, keep].double(), v[0, 1, keep].double()  # [J, H, D], [K, H, D]
    logits = torch.einsum("qhd,khd->hqk", qd, kd) * D**-0.5 + bias[0][:, :, keep].double()
    expected = torch.einsum("hqk,khd->qhd", logits.softmax(-1), vd)  # [J, H, D]
    assert max_rel_err(out[0, 1], expected) < 1e-5


def test_reference_matches_per_row_formula():
    """The oracle's einsums against a plain loop over (b, i, h): catches a transposed bias."""
    B, I, J, H, D = 2, 2, 9, 3, 8
    q, k, v, bias = (t.double() for t in make_inputs(B, I, J, H, D, std=1.0, seed=15))
    mask = make_mask(B, I, J, 15)
    out = triangle_attention_reference(q, k, v, bias, mask, scale=0.3)
    for b in range(B):
        for i in range(I):
            for h in range(H):
                a = q[b, i, :, h] @ k[b, i, :, h].T * 0.3 + bias[b, h]  # [J, J]
                a = a + (mask[b, i].double() - 1) * 1e9
                torch.testing.assert_close(out[b, i, :, h], a.softmax(-1) @ v[b, i, :, h])


@pytest.mark.parametrize("fn", [triangle_attention, triangle_attention_torch], ids=["kernel", "torch"])
def test_explicit_scale_and_bias_matter(fn):
    B, I, J, H, D = 1, 2, 17, 2, 16
    q, k, v, bias = make_inputs(B, I, J, H, D, std=1.0, seed=16)
    expected = triangle_attention_reference(q.double(), k.double(), v.double(), bias.double(), scale=0.41)
    assert max_rel_err(fn(q, k, v, bias, scale=0.41), expected) < 1e-5
    no_bias = triangle_attention_reference(q.double(), k.double(), v.double(), 0 * bias.double(), scale=0.41)
    assert max_rel_err(expected, no_bias) > 1e-2


# The tl.dot precisions each dtype can launch with (fp32: per torch.get_float32_matmul_precision()).
PRECISIONS = {torch.float32: ("ieee", "tf32x3", "tf32"), torch.bfloat16: ("tf32",), torch.float16: ("tf32",)}
TNAMES = {"*fp32": torch.float32, "*fp16": torch.float16, "*bf16": torch.bfloat16}


@pytest.mark.parametrize("arch", [90, 80])
def test_aot_configs(arch):
    """One config per (q/k/v dtype, bias dtype, dot precision, mask) with the launcher's tiles."""
    configs = aot_configs(arch)
    expected = {
        (dtype, bias_dtype, precision, masked)
        for dtype, bias_dtype in tri.MODEL_LAUNCH_DTYPES for precision in PRECISIONS[dtype] for masked in (False, True)
    }  # fmt: skip
    assert len({c.name for c in configs}) == len(configs) == len(expected)
    seen = set()
    for c in configs:
        dtype, bias_dtype = TNAMES[c.signature["q_ptr"]], TNAMES[c.signature["bias_ptr"]]
        precision = c.constexprs["DOT_PRECISION"]
        seen.add((dtype, bias_dtype, precision, c.constexprs["HAS_MASK"]))
        tiles = tri._cuda_tiles(32, dtype, arch, precision)  # what the launcher launches on that arch
        assert (c.num_warps, c.num_stages) == (tiles["num_warps"], tiles["num_stages"])
        assert all(c.constexprs[k] == tiles[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_D"))
        assert c.uses_dot and c.constexprs["BLOCK_D"] == 32 and c.constexprs["UPCAST_DOT"] is False
        assert {"q_ptr", "bias_ptr", "mask_ptr", "I", "J", "H", "D", "qk_scale"} <= set(c.signature)
        assert c.signature["mask_ptr"] == ("*fp32" if c.constexprs["HAS_MASK"] else c.signature["q_ptr"])
    assert seen == expected


def _recording_backend(model, launches: set):
    """Gives ``model`` its torch backend with a triangle_attention that records each launch's
    (q dtype, bias dtype, head dim, mask given)."""
    import dataclasses

    from esmfold_fast.backend import BackendModule

    base = model.set_backend("torch")

    def triangle_attention(q, k, v, bias, mask=None, *args, **kwargs):
        launches.add((q.dtype, bias.dtype, q.shape[-1], mask is not None))
        return base.triangle_attention(q, k, v, bias, mask, *args, **kwargs)

    recording = dataclasses.replace(base, triangle_attention=triangle_attention)
    for module in model.modules():  # set_backend takes registered backends only
        if isinstance(module, BackendModule):
            module.ops = recording


@pytest.mark.parametrize("dtype", DTYPES)
def test_aot_configs_cover_every_esmfold_launch(dtype):
    """A (tiny) ESMFold in ``dtype`` folds a padded batch; every triangle_attention launch it makes (trunk
    and sequence attention, with and without masks) has an AOT config of its dtypes, and
    MODEL_LAUNCH_DTYPES lists exactly the dtype pairs a model makes."""
    from esmfold_fast import ESMFold

    model = ESMFold.from_config("tiny", backend="torch", dtype=dtype, num_blocks=1)
    launches: set = set()
    _recording_backend(model, launches)
    with torch.no_grad():
        model.infer(["ACDEFGHIK", "MKV"], num_recycles=0)  # padded: masked launches
        model.infer("ACDEFGH", num_recycles=0)  # unpadded: the trunk's launches without a mask
    pairs = {(q, b) for q, b, _, _ in launches}
    assert pairs == {p for p in tri.MODEL_LAUNCH_DTYPES if p[1] == dtype}, launches
    assert {m for *_, m in launches} == {False, True}
    for arch in (90, 80):
        have = {(TNAMES[c.signature["q_ptr"]], TNAMES[c.signature["bias_ptr"]], c.constexprs["HAS_MASK"],
                 c.constexprs["DOT_PRECISION"]) for c in aot_configs(arch)}  # fmt: skip
        for q_dtype, bias_dtype, _, masked in launches:
            for precision in PRECISIONS[q_dtype]:
                assert (q_dtype, bias_dtype, masked, precision) in have, (arch, q_dtype, bias_dtype, masked)


def test_shape_errors_are_loud():
    q, k, v, bias = make_inputs(1, 2, 17, 2, 16)
    with pytest.raises(ValueError):
        triangle_attention_torch(q, k, v, bias[:, :1])
    with pytest.raises(ValueError):
        triangle_attention(q, k, v, bias, torch.ones(1, 2, 5))


# --------------------------------------------------------------------------------------------
# Gradients: gradcheck of the float64 paths; the kernel's backward against the float64 oracle's.
# --------------------------------------------------------------------------------------------


def _leaf(t, dtype):
    return t.detach().to(dtype, copy=True).requires_grad_(True)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("fn", [triangle_attention_reference, triangle_attention_torch], ids=["reference", "torch"])
def test_gradcheck_float64(fn, masked):
    """Exact float64 gradients for q, k, v and bias, several row chunks. The mask has holes but no fully
    masked row: there every logit sits near -1e9, where float64 steps (1e-7) swamp gradcheck's 1e-6."""
    B, I, J, H, D = 2, 3, 5, 2, 3
    q, k, v, bias = (_leaf(t, torch.float64) for t in make_inputs(B, I, J, H, D, std=1.0, bias_std=1.0, seed=20))
    mask = make_mask(B, I, J, 20) if masked else None
    if masked:
        mask[..., 0] = True
        assert not mask.all()
    assert torch.autograd.gradcheck(lambda *qkvb: fn(*qkvb, mask, chunk_size=2), (q, k, v, bias))


@pytest.mark.parametrize(
    "shape, masked", [((2, 3, 17, 2, 16), False), ((2, 3, 17, 2, 16), True), ((1, 1, 17, 8, 32), True)],
    ids=["rows", "rows-masked", "sequence-masked"],
)  # fmt: skip
def test_kernel_gradients_match_fp64_reference(shape, masked):
    """Backward through the kernel (fp32) against the float64 oracle's gradients, per input: the error
    is at most 3x the fp32 reference's plus the forward tests' floor. Dead (fully masked) rows get no
    upstream gradient, as padding in the model."""
    B, I, J, H, D = shape
    inputs = make_inputs(B, I, J, H, D, seed=21)
    mask = make_mask(B, I, J, 21) if masked else None
    gen = torch.Generator().manual_seed(22)
    g_out = torch.randn(B, I, J, H, D, generator=gen, dtype=torch.float64)
    g_out *= live_rows(mask, B, I)[:, :, None, None, None]

    def grads(fn, dtype):
        leaves = [_leaf(t, dtype) for t in inputs]
        out = fn(*leaves, mask)
        return torch.autograd.grad(out, leaves, g_out.to(dtype))

    exact = grads(triangle_attention_reference, torch.float64)
    same_dtype = grads(triangle_attention_reference, torch.float32)
    got = grads(triangle_attention, torch.float32)
    for name, g, e, s in zip("qkvb", got, exact, same_dtype):
        err, ref_err = max_rel_err(g, e), max_rel_err(s, e)
        assert err <= 3 * ref_err + ATOL[torch.float32], (name, err, ref_err)


def test_kernel_out_with_autograd_is_an_error():
    q, k, v, bias = (_leaf(t, torch.float32) for t in make_inputs(1, 2, 9, 2, 16, seed=23))
    out = torch.empty(q.shape)
    with pytest.raises(RuntimeError, match="inference-only"):
        triangle_attention(q, k, v, bias, out=out)
    with torch.no_grad():
        assert triangle_attention(q, k, v, bias, out=out).data_ptr() == out.data_ptr()


def test_torch_path_values_do_not_depend_on_autograd():
    """The out-of-place (autograd) forms compute what the in-place inference forms do (with a mask SDPA
    may pick another kernel when the mask requires grad: fp32 rounding apart)."""
    q, k, v, bias = (_leaf(t, torch.float32) for t in make_inputs(2, 3, 17, 2, 16, seed=24))
    for mask in (None, make_mask(2, 3, 17, 24)):
        with torch.no_grad():
            inference = triangle_attention_torch(q, k, v, bias, mask, chunk_size=2)
        recorded = triangle_attention_torch(q, k, v, bias, mask, chunk_size=2)
        assert recorded.requires_grad and max_rel_err(recorded.detach(), inference) < 1e-6


def test_kernel_double_backward_matches_reference():
    """backward(create_graph=True) through the kernel keeps its recomputed graph: second derivatives
    (a gradient penalty) agree with the float64 oracle's."""
    inputs = make_inputs(1, 2, 9, 2, 8, std=1.0, bias_std=1.0, seed=25)
    mask = make_mask(1, 2, 9, 25)
    mask[..., 0] = True

    def second(fn, dtype):
        leaves = [_leaf(t, dtype) for t in inputs]
        (g,) = torch.autograd.grad(fn(*leaves, mask).pow(2).sum(), leaves[0], create_graph=True)
        return torch.autograd.grad(g.pow(2).sum(), leaves)

    for name, got, exact in zip("qkvb", second(triangle_attention, torch.float32),
                                second(triangle_attention_reference, torch.float64)):  # fmt: skip
        assert max_rel_err(got, exact) < 1e-5, name


# --------------------------------------------------------------------------------------------
# The CUDA launcher's tile configurations, run through the interpreter (emulate_arch)
# --------------------------------------------------------------------------------------------
# The torch setting that selects each fp32 dot precision (the policy, spelled out so the test can fail).
MATMUL_PRECISION = {"ieee": "highest", "tf32x3": "high", "tf32": "medium"}
# Error floors of fp32 launched on tensor cores (a GPU run; the interpreter computes tf32 dots in fp32).
TF32_ATOL = {"tf32x3": 1e-5, "tf32": 5e-3}


@pytest.fixture
def matmul_precision():
    """Sets torch.set_float32_matmul_precision for the test and restores it afterwards."""
    before = torch.get_float32_matmul_precision()
    yield torch.set_float32_matmul_precision
    torch.set_float32_matmul_precision(before)


def _tile_cases() -> list:
    """One (arch, q/k/v dtype, bias dtype, precision) per distinct interpreted configuration (the tiles;
    the interpreter ignores warps and stages) over sm_80/sm_90 and the model's launches, at D = 32."""
    cases: dict[tuple, tuple] = {}
    for arch in (80, 90):
        for dtype, bias_dtype in tri.MODEL_LAUNCH_DTYPES:
            for precision in PRECISIONS[dtype]:
                tiles = tri._cuda_tiles(32, dtype, arch, precision)
                key = (dtype, bias_dtype, tiles["BLOCK_M"], tiles["BLOCK_N"], tiles["BLOCK_D"])
                cases.setdefault(key, (arch, dtype, bias_dtype, precision))
    return list(cases.values())


def _case_id(case) -> str:
    arch, dtype, bias_dtype, precision = case
    return f"sm{arch}-{str(dtype)[6:]}-bias_{str(bias_dtype)[6:]}{'-' + precision if dtype == torch.float32 else ''}"


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("case", _tile_cases(), ids=_case_id)
def test_every_cuda_config(case, masked, matmul_precision):
    """The kernel at each tile configuration the CUDA launcher picks, at a row length with ragged query
    and key tiles, into a NaN-poisoned out=, against the float64 reference (bias as given)."""
    arch, dtype, bias_dtype, precision = case
    matmul_precision(MATMUL_PRECISION[precision] if dtype == torch.float32 else "highest")
    tiles = tri._cuda_tiles(32, dtype, arch, precision)
    B, I, J, H, D = 1, 2, max(tiles["BLOCK_M"], tiles["BLOCK_N"]) + 3, 2, 32
    q, k, v, bias = make_inputs(B, I, J, H, D, seed=J + len(_case_id(case)))
    q, k, v, bias = q.to(dtype), k.to(dtype), v.to(dtype), bias.to(bias_dtype)
    mask = make_mask(B, I, J, J) if masked else None
    out = poison_(torch.empty(B, I, J, H, D, dtype=dtype))
    with utils.emulate_arch(arch):
        triangle_attention(q, k, v, bias, mask, out=out)
    assert torch.isfinite(out).all()
    live = live_rows(mask, B, I)
    exact = triangle_attention_reference(q.double(), k.double(), v.double(), bias.double(), mask)
    same_dtype = triangle_attention_reference(q, k, v, bias, mask)
    err, ref_err = max_rel_err(out[live], exact[live]), max_rel_err(same_dtype[live], exact[live])
    tensor_core_fp32 = dtype == torch.float32 and precision != "ieee" and not utils.interpreting()
    assert err <= 3 * ref_err + (TF32_ATOL[precision] if tensor_core_fp32 else ATOL[dtype]), (err, ref_err)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dot_precision_follows_torch_setting(dtype, monkeypatch, matmul_precision):
    """The launch passes the DOT_PRECISION the policy gives for the torch setting, and on a GPU the
    tiles chosen for that precision; half dtypes always "tf32"."""
    q, k, v, bias = (t.to(dtype) for t in make_inputs(1, 1, 17, 2, 32, seed=31))
    for setting, precision in (("highest", "ieee"), ("high", "tf32x3"), ("medium", "tf32")):
        matmul_precision(setting)
        kernel = LaunchRecorder(tri._triangle_attention_fwd)
        monkeypatch.setattr(tri, "_triangle_attention_fwd", kernel)
        with utils.emulate_arch(90):
            triangle_attention(q, k, v, bias)
        expected = precision if dtype == torch.float32 else "tf32"
        (launched,) = kernel.launches
        assert launched["DOT_PRECISION"] == expected
        tiles = tri._cuda_tiles(32, dtype, 90, expected)
        assert all(launched[key] == tiles[key] for key in ("BLOCK_M", "BLOCK_N", "BLOCK_D"))
        monkeypatch.undo()


def test_out_of_resources_falls_back_once_then_fails_loudly(monkeypatch):
    """A launch that runs out of GPU resources is retried once with the next smaller tiles (and the
    result is right); when that fails too, the error names the op."""
    monkeypatch.setattr(utils, "_FALLBACKS", {})
    B, I, J, H, D = 1, 1, 70, 2, 32
    q, k, v, bias = (t.to(torch.float16) for t in make_inputs(B, I, J, H, D, seed=32))
    big = tri._cuda_tiles(D, torch.float16, 90, "tf32")
    smaller = tri._smaller(big)
    assert smaller["BLOCK_M"] * smaller["BLOCK_N"] < big["BLOCK_M"] * big["BLOCK_N"]
    kernel = LaunchRecorder(tri._triangle_attention_fwd, limit=smaller["BLOCK_M"] * smaller["BLOCK_N"])
    monkeypatch.setattr(tri, "_triangle_attention_fwd", kernel)
    with utils.emulate_arch(90), pytest.warns(RuntimeWarning, match="smaller configuration"):
        out = triangle_attention(q, k, v, bias)
    assert [(l["BLOCK_M"], l["BLOCK_N"]) for l in kernel.launches] == [
        (big["BLOCK_M"], big["BLOCK_N"]), (smaller["BLOCK_M"], smaller["BLOCK_N"])
    ]
    exact = triangle_attention_reference(q.double(), k.double(), v.double(), bias.double())
    same_dtype = triangle_attention_reference(q, k, v, bias)
    assert max_rel_err(out, exact) <= 3 * max_rel_err(same_dtype, exact) + ATOL[torch.float16]

    monkeypatch.setattr(utils, "_FALLBACKS", {})
    kernel.limit = 0  # the smaller configuration runs out too
    with utils.emulate_arch(90), pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="triangle_attention"):
        triangle_attention(q, k, v, bias)
