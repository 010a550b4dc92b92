"""fair-esm's fp16 LM: its rotary tables are computed in fp16 after ``model.half()``, and ours can be too.

ESMFold's LM makes them that way (the released trunk was trained behind fair-esm's fp16 LM); a standalone
ESM-2 keeps fp32 tables at every dtype, as before (fair-esm's fp32 ESM-2 computes fp32 tables).
"""

from __future__ import annotations

import copy
import random

import esm
import pytest
import torch
from _util import max_rel_err, randomize_
from esm.rotary_embedding import RotaryEmbedding as FairRotary

from esmfold_fast import ESMFold
from esmfold_fast.alphabet import Alphabet
from esmfold_fast.esm2 import ESM2, RotaryEmbedding

CPU = torch.device("cpu")


def _fair_tables(head_dim: int, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """fair-esm's tables after ``.to(dtype)``, for a checkpoint's fp16-rounded ``inv_freq``."""
    rot = FairRotary(head_dim)
    rot.inv_freq.copy_(rot.inv_freq.half().float())
    cos, sin = rot.to(dtype)._update_cos_sin_tables(torch.zeros(1, 1, length, head_dim, dtype=dtype), -2)
    return cos[0], sin[0]


def _ours(head_dim: int, fair_esm_half: bool) -> RotaryEmbedding:
    rot = RotaryEmbedding(head_dim, fair_esm_half=fair_esm_half)
    rot.inv_freq.copy_(rot.inv_freq.half().float())
    return rot


@pytest.mark.parametrize("head_dim", [16, 24, 64])
def test_half_tables_are_fair_esm_bit_for_bit(head_dim):
    # 2050 and 2702: positions past 2048 are rounded to even numbers in fp16, as fair-esm rounds them.
    for length in (7, 514, 2050, 2702):
        for dtype in (torch.float16, torch.bfloat16):
            cos, sin = _ours(head_dim, True).cos_sin(length, CPU, dtype)
            ref_cos, ref_sin = _fair_tables(head_dim, length, dtype)
            assert cos.dtype == sin.dtype == torch.float32  # exact upcasts: the kernels take fp32 tables
            assert torch.equal(cos, ref_cos.float()) and torch.equal(sin, ref_sin.float()), (length, dtype)
        # Without the switch (and at fp32 with it) the tables are fair-esm's fp32 ones, bit for bit.
        ref32 = _fair_tables(head_dim, length, torch.float32)
        for rot, dtype in ((_ours(head_dim, False), torch.float16), (_ours(head_dim, True), torch.float32)):
            got = rot.cos_sin(length, CPU, dtype)
            assert torch.equal(got[0], ref32[0]) and torch.equal(got[1], ref32[1]), (length, dtype)
    # The gap the switch closes (ESM-2 3B's head dim 64): 0.124 at T=514, 0.495 at 2050.
    cos16 = _ours(64, True).cos_sin(514, CPU, torch.float16)[0]
    assert 0.1 < (cos16 - _fair_tables(64, 514, torch.float32)[0]).abs().max() < 0.15


def test_tables_follow_the_switch_and_length():
    rot = _ours(16, True)
    half = rot.cos_sin(600, CPU, torch.float16)
    assert rot.cos_sin(600, CPU, torch.float16)[0] is half[0]  # cached
    full = rot.cos_sin(600, CPU, torch.float32)
    assert not torch.equal(half[0], full[0])
    rot.fair_esm_half = False
    assert torch.equal(rot.cos_sin(600, CPU, torch.float16)[0], full[0])


def test_esmfold_lm_uses_fair_esm_half_tables_and_standalone_esm2_does_not():
    model = ESMFold.from_config("tiny")
    assert model.esm.fair_esm_half_rotary
    assert all(layer.self_attn.rot_emb.fair_esm_half for layer in model.esm.layers)
    standalone = ESM2(num_layers=2, embed_dim=32, attention_heads=2)
    assert not standalone.fair_esm_half_rotary
    standalone.fair_esm_half_rotary = True
    assert all(layer.self_attn.rot_emb.fair_esm_half for layer in standalone.layers)


@pytest.fixture(scope="module")
def fp16_pair():
    """A randomised fair-esm ESM-2 (head dim 64) and ours with its weights, both ``.half()``, and tokens
    of a 1028-residue and a 50-residue sequence (padding and positions far from 0)."""
    layers, dim, heads = 2, 128, 2
    ref = esm.model.esm2.ESM2(num_layers=layers, embed_dim=dim, attention_heads=heads, alphabet="ESM-1b")
    randomize_(ref, seed=3)
    for layer in ref.layers:  # checkpoint values: fp16-rounded frequencies
        layer.self_attn.rot_emb.inv_freq.copy_(layer.self_attn.rot_emb.inv_freq.half().float())
    ours = ESM2(num_layers=layers, embed_dim=dim, attention_heads=heads)
    ours.load_state_dict(ref.state_dict())
    rng = random.Random(0)
    seqs = [(name, "".join(rng.choice("LAGVSERTIDPKQNFYMHWC") for _ in range(n)))
            for name, n in (("a", 1028), ("b", 50))]
    tokens = Alphabet().get_batch_converter()(seqs)[2]
    with torch.no_grad():
        ref32 = ref.eval()(tokens, repr_layers=range(layers + 1))["representations"]
    ref16 = copy.deepcopy(ref).half()
    with torch.no_grad():
        for layer in ref16.layers:  # fair-esm's table cache is keyed on length only: drop the fp32 tables
            layer.self_attn.rot_emb._seq_len_cached = None
        ref16 = ref16(tokens, repr_layers=range(layers + 1))["representations"]
    return ours.half().eval(), tokens, ref16, ref32


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_fp16_representations_follow_fair_esm(fp16_pair, backend):
    """With fair-esm's tables our fp16 ESM-2 is within fp16 rounding of fair-esm's fp16 one; with fp32 tables
    it is off by as much as fair-esm's fp16 model is from its own fp32 model.

    Tolerance: both sides compute in fp16 (one rounding = 2^-11 = 4.9e-4 relative) but round in different
    places (one fused q/k/v GEMM against three, LayerNorm and residual adds fused, token-dropout scaling in
    another order, the torch backend's rotary in fp32), so errors of a few roundings of the largest
    element are expected: measured 1.3e-3 and 1.8e-3 after the two layers, bound 4e-3 (8 roundings). With fp32
    tables the error is 1.4e-2 and 9.7e-3 (fair-esm fp16 against fair-esm fp32: 1.4e-2, 1.0e-2), 5x larger.
    """
    from esmfold_fast.backend import set_backend

    model, tokens, ref16, ref32 = fp16_pair
    set_backend(model, backend)
    errors = {}
    for switch in (True, False):
        model.fair_esm_half_rotary = switch
        with torch.inference_mode():
            reps = model(tokens, repr_layers=range(model.num_layers + 1))["representations"]
        assert all(r.dtype == torch.float16 for r in reps.values())
        errors[switch] = [max_rel_err(reps[i], ref16[i]) for i in range(1, model.num_layers + 1)]
    assert max(errors[True]) < 4e-3, errors
    assert min(errors[False]) > 4 * max(errors[True]), errors
    # And what fair-esm's own fp16 model is off from its fp32 one, which the switch reproduces.
    assert max_rel_err(ref16[model.num_layers], ref32[model.num_layers]) > 4 * max(errors[True])
