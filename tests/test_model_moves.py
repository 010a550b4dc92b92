"""Moving and casting ESMFold and ESM-2 (``.to``, ``.cuda``, ``.half``, ``.bfloat16``, ``.float``, ``.double``): a
converted model is laid out as ``from_pretrained`` builds it for that device and dtype (float32 islands, the LM in
fp16 on CUDA), its backend validated again for the new device, and a conversion it cannot take raises before
anything has moved."""

from __future__ import annotations

import pytest
import torch

import fastfold_kernels.utils
from _esmfold_hf import LM, REDUCED_TRUNK, hf_folding_model, save_hf
from esmfold_fast import ESM2, ESMFold
from esmfold_fast.backend import BackendModule
from esmfold_fast.esm2 import backend_for_move

SEQ = "MKTAYIAKQRQISFVKSHF"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_hf(hf_folding_model(REDUCED_TRUNK, seed=3), tmp_path_factory.mktemp("moves"))


def _load(checkpoint, **kwargs):
    return ESMFold.from_pretrained(checkpoint, backend=kwargs.pop("backend", "torch"), **kwargs)


def _same_state(a: ESMFold, b: ESMFold) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


def _backends(model) -> set[str]:
    return {m.ops.name for m in model.modules() if isinstance(m, BackendModule)}


@pytest.mark.parametrize(
    "dtype, convert",
    [
        (torch.float16, lambda m: m.half()),
        (torch.bfloat16, lambda m: m.bfloat16()),
        (torch.bfloat16, lambda m: m.to(torch.bfloat16)),
        (torch.float16, lambda m: m.to("cpu", torch.float16)),
        (torch.float64, lambda m: m.double()),
    ],
    ids=["half", "bfloat16", "to_bf16", "to_cpu_fp16", "double"],
)
def test_a_cast_model_is_the_model_loaded_in_that_dtype(checkpoint, dtype, convert):
    """Cast after loading == loaded in that dtype, bit for bit: the half-precision pair track is the rounded
    checkpoint, the float32 islands hold the checkpoint's values (never rounded through fp16), the token map
    stays an integer table, and the fold is the same."""
    cast = convert(_load(checkpoint))
    loaded = _load(checkpoint, dtype=dtype)
    assert cast.dtype == dtype and cast.af2_to_esm.dtype == torch.long
    _same_state(cast, loaded)
    if dtype != torch.float64:
        for module in cast.float32_islands():
            assert {p.dtype for p in module.parameters()} == {torch.float32}
    out, expected = cast.infer(SEQ, num_recycles=0), loaded.infer(SEQ, num_recycles=0)
    assert torch.isfinite(out["positions"]).all() and torch.isfinite(out["plddt"]).all()
    for key in ("positions", "plddt", "ptm"):
        assert torch.equal(out[key], expected[key]), key


def test_float_after_half_restores_float32_with_unrounded_islands(checkpoint):
    fp32 = _load(checkpoint)
    back = _load(checkpoint).half().float()
    assert back.dtype == torch.float32
    assert {p.dtype for p in back.parameters()} == {torch.float32}
    reference = fp32.state_dict()
    for module in back.float32_islands():  # only moved while the model was fp16: exact
        for name, p in module.named_parameters():
            assert torch.equal(p, dict(fp32.named_parameters())[_qualified(back, module, name)])
    pair = back.trunk.blocks[0].tri_mul_out.linear_a_p.weight  # rounded while fp16, as a user would expect
    exact = reference["trunk.blocks.0.tri_mul_out.linear_a_p.weight"]
    assert torch.equal(pair, exact.half().float())
    out = back.infer(SEQ, num_recycles=0)
    assert torch.isfinite(out["positions"]).all()


def _qualified(model, module, name) -> str:
    prefix = next(n for n, m in model.named_modules() if m is module)
    return f"{prefix}.{name}" if prefix else name


@pytest.mark.parametrize("convert", [lambda m: m.to(torch.int64), lambda m: m.type(torch.int32)], ids=["to", "type"])
def test_a_non_floating_dtype_is_refused_before_anything_changes(checkpoint, convert):
    model = _load(checkpoint)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises((TypeError, ValueError)):
        convert(model)
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


def test_a_move_revalidates_the_backend(checkpoint, monkeypatch):
    auto = _load(checkpoint, backend="auto")
    assert auto.to("cpu").backend.name == "torch" and _backends(auto) == {"torch"}
    reference = _load(checkpoint, backend="reference").float()
    assert reference.backend.name == "reference" and _backends(reference) == {"reference"}
    # triton on the CPU runs only under the interpreter; without it a move (even to the same device) refuses
    triton = _load(checkpoint, backend="triton")
    assert _backends(triton) == {"triton"}
    monkeypatch.setattr(fastfold_kernels.utils, "_INTERPRET_AT_IMPORT", False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET.*not moved"):
        triton.to("cpu", torch.bfloat16)
    assert triton.dtype == torch.float32 and _backends(triton) == {"triton"}  # untouched
    triton.set_backend("auto")
    assert triton.to("cpu").backend.name == "torch" and _backends(triton) == {"torch"}


def test_a_move_to_a_device_the_backend_cannot_run_on_is_refused(checkpoint):
    """The meta device stands in for one triton cannot run on: the model stays where it was."""
    model = _load(checkpoint, backend="triton")
    with pytest.raises(RuntimeError, match="cannot run on device meta.*not moved"):
        model.to("meta")
    assert {p.device.type for p in model.parameters()} == {"cpu"} and _backends(model) == {"triton"}
    model.set_backend("auto")
    assert torch.isfinite(model.infer(SEQ, num_recycles=0)["positions"]).all()  # intact
    assert model.to("meta").device.type == "meta" and model.backend.name == "torch"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_cuda_without_cuda_raises_torchs_error_before_moving(checkpoint):
    model = _load(checkpoint, backend="auto")
    with pytest.raises((AssertionError, RuntimeError), match="(?i)cuda"):
        model.cuda()
    assert model.device.type == "cpu" and {p.device.type for p in model.parameters()} == {"cpu"}


def test_on_cuda_auto_resolves_to_triton_and_the_lm_goes_fp16(checkpoint, monkeypatch):
    """What a move to CUDA does, checked without a GPU: the backend 'auto' resolves to for CUDA, and the
    dtype each module gets there (the tensors themselves cannot go to a GPU here)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(fastfold_kernels.utils, "_INTERPRET_AT_IMPORT", False)
    assert backend_for_move("auto", torch.device("cuda")).name == "triton"
    monkeypatch.setattr(fastfold_kernels.utils, "_INTERPRET_AT_IMPORT", True)  # kernels built for the interpreter
    with pytest.raises(RuntimeError, match="not moved"):
        backend_for_move("auto", torch.device("cuda"))

    model = _load(checkpoint)
    cuda = torch.device("cuda")
    pair, island = model.trunk.blocks[0].tri_mul_out, model.trunk.structure_module
    for dtype, lm, rest, islands in [
        (torch.float32, torch.float16, torch.float32, torch.float32),
        (torch.bfloat16, torch.float16, torch.bfloat16, torch.float32),
        (torch.float64, torch.float64, torch.float64, torch.float64),
    ]:
        layout = model.dtype_layout(cuda, dtype)
        assert {layout[m] for m in model.esm.modules()} == {lm}
        assert layout[pair] == rest and layout[island] == islands and layout[model] == islands
    assert {model.dtype_layout(torch.device("cpu"), torch.float32)[m] for m in model.esm.modules()} == {torch.float32}
    model.config.fp16_esm = False  # the documented way to keep the LM in float32 on CUDA
    assert {model.dtype_layout(cuda, torch.float32)[m] for m in model.esm.modules()} == {torch.float32}


def test_esm2_moves_keep_rotary_fp32_and_revalidate_the_backend(tmp_path, monkeypatch):
    from transformers import EsmConfig, EsmForMaskedLM

    from esmfold_fast.alphabet import Alphabet

    config = EsmConfig(vocab_size=33, position_embedding_type="rotary", token_dropout=True, pad_token_id=1,
                       mask_token_id=32, layer_norm_eps=1e-5, emb_layer_norm_before=False,
                       vocab_list=Alphabet().all_toks, max_position_embeddings=1026, **LM)  # fmt: skip
    torch.manual_seed(0)
    EsmForMaskedLM(config).eval().save_pretrained(tmp_path / "lm")
    lm = ESM2.from_pretrained(tmp_path / "lm", backend="auto")
    tokens = torch.tensor([[0, 5, 6, 7, 8, 2]])
    expected = lm(tokens)["logits"]
    half = lm.bfloat16()
    assert half.embed_tokens.weight.dtype == torch.bfloat16 and half.lm_head.weight is half.embed_tokens.weight
    assert {layer.self_attn.rot_emb.inv_freq.dtype for layer in half.layers} == {torch.float32}
    assert _backends(half) == {"torch"}
    back = half.float()
    torch.testing.assert_close(back(tokens)["logits"], expected, rtol=0.05, atol=0.05)
    with pytest.raises(TypeError):
        back.to(torch.int8)
    back.set_backend("triton")
    monkeypatch.setattr(fastfold_kernels.utils, "_INTERPRET_AT_IMPORT", False)
    with pytest.raises(RuntimeError, match="not moved"):
        back.half()
    assert back.embed_tokens.weight.dtype == torch.float32
