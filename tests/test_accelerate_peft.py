"""PEFT (LoRA) wrapping of accelerated models (issue 9: "PEFT wrapping keeps working").

Tiny randomised transformers ``EsmModel`` / ``EsmForMaskedLM`` / ``EsmForProteinFolding`` and fair-esm ``ESM2``,
LoRA on the attention query/value projections with every LoRA B randomised (non-zero, so the adapters change the
outputs and a path that ignored them could not pass). Both orders: ``accelerate`` then ``get_peft_model``, and
``get_peft_model`` then ``accelerate(peft_model)``. Every comparison is against the same PEFT-wrapped model never
accelerated (a deep copy), and a counting backend proves the fast path ran.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")

from _esmfold_hf import REDUCED_TRUNK, encode, hf_folding_model, random_sequence  # noqa: E402
from _util import randomize_  # noqa: E402
from esmfold_fast import accelerate, restore  # noqa: E402
from esmfold_fast.alphabet import Alphabet  # noqa: E402
from esmfold_fast.dropin import is_accelerated  # noqa: E402
from test_accelerate import counted, rel, tokens  # noqa: E402,F401 - the counting backend fixture, helpers
from transformers import EsmConfig, EsmForMaskedLM, EsmModel  # noqa: E402

LM_TOL = 1e-5
GRAD_TOL = 1e-4
FOLD_POS_TOL = 1e-3


def lm(cls=EsmModel, seed: int = 0) -> nn.Module:
    config = EsmConfig(
        vocab_size=33, hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96,
        position_embedding_type="rotary", token_dropout=True, pad_token_id=1, mask_token_id=32,
        max_position_embeddings=64, emb_layer_norm_before=False, vocab_list=Alphabet().all_toks,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(seed)
    return randomize_(cls(config).eval(), seed=seed)


def lora_config(targets=("query", "value"), **kw):
    return peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=list(targets), **kw)


@torch.no_grad()
def randomize_lora_(model: nn.Module, seed: int = 7) -> nn.Module:
    """Non-zero LoRA A and B (PEFT initialises B to zero: the adapters would change nothing)."""
    gen = torch.Generator().manual_seed(seed)
    n = 0
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            n += 1
    assert n > 0
    return model


def wrapped_pair(cls=EsmModel, order: str = "accelerate_first"):
    """(accelerated PEFT model, the same PEFT model never accelerated), with identical weights."""
    base = lm(cls)
    ref = randomize_lora_(peft.get_peft_model(copy.deepcopy(base), lora_config()))
    if order == "accelerate_first":
        model = peft.get_peft_model(accelerate(copy.deepcopy(base)), lora_config())
    else:
        model = accelerate(peft.get_peft_model(copy.deepcopy(base), lora_config()))
    model.load_state_dict(ref.state_dict())
    return model, ref


def lora_named(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


# ------------------------------------------------------------------------------------------------
# transformers EsmModel / EsmForMaskedLM
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["accelerate_first", "wrap_first"])
def test_lora_lm_forward_matches_and_lora_is_used(order, counted):
    model, ref = wrapped_pair(EsmModel, order)
    assert is_accelerated(model)
    ids, am = tokens()
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=am).last_hidden_state
        got = model(input_ids=ids, attention_mask=am).last_hidden_state
        with ref.disable_adapter():
            no_lora = ref(input_ids=ids, attention_mask=am).last_hidden_state
    assert counted["rotary_attention"] == 2  # the fast core ran in both layers
    assert rel(want, no_lora) > 1e-2  # the adapters matter
    assert rel(got, want) < LM_TOL
    # disable_adapter on the accelerated model too
    with torch.no_grad(), model.disable_adapter():
        assert rel(model(input_ids=ids, attention_mask=am).last_hidden_state, no_lora) < LM_TOL


@pytest.mark.parametrize("order", ["accelerate_first", "wrap_first"])
def test_lora_lm_gradients_match(order, counted):
    model, ref = wrapped_pair(EsmForMaskedLM, order)
    model.train()
    ref.train()
    ids, am = tokens(3)
    ref(input_ids=ids, attention_mask=am, labels=ids).loss.backward()
    model(input_ids=ids, attention_mask=am, labels=ids).loss.backward()
    assert counted["rotary_attention"] == 2
    want, got = lora_named(ref), lora_named(model)
    assert set(want) == set(got) and len(want) == 2 * 2 * 2  # 2 layers x (query, value) x (A, B)
    for n, p in got.items():
        assert p.requires_grad and p.grad is not None, n
        assert want[n].grad.abs().max() > 0, n
        assert rel(p.grad, want[n].grad) < GRAD_TOL, (n, rel(p.grad, want[n].grad))
    # only LoRA is trainable, as PEFT set it up
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    # gradient checkpointing through the PEFT model: forward and recompute both fast, same gradients
    model.zero_grad()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model(input_ids=ids, attention_mask=am, labels=ids).loss.backward()
    assert counted["rotary_attention"] == 2 + 4
    for n, p in lora_named(model).items():
        assert rel(p.grad, want[n].grad) < GRAD_TOL, (n, "checkpointed")


def test_lora_lm_merge_and_unload(counted):
    model, ref = wrapped_pair(EsmModel)
    ids, am = tokens(5)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=am).last_hidden_state
    merged = model.merge_and_unload()
    assert isinstance(merged, EsmModel) and is_accelerated(merged)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        got = merged(input_ids=ids, attention_mask=am).last_hidden_state
    assert counted["rotary_attention"] == 2
    assert rel(got, want) < LM_TOL
    restore(merged)
    with torch.no_grad():
        assert rel(merged(input_ids=ids, attention_mask=am).last_hidden_state, want) < LM_TOL


def test_lora_lm_save_pretrained_adapter_round_trip(tmp_path, counted):
    model, ref = wrapped_pair(EsmModel)
    ids, am = tokens(6)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=am).last_hidden_state
    model.save_pretrained(tmp_path / "acc")
    ref.save_pretrained(tmp_path / "ref")
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "acc" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "ref" / "adapter_model.safetensors"))
    assert sorted(a) == sorted(b) and len(a) == 8
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the saved adapter loads onto a fresh (then accelerated) base and gives the same outputs
    loaded = peft.PeftModel.from_pretrained(lm(EsmModel), tmp_path / "acc").eval()
    accelerate(loaded)
    with torch.no_grad():
        got = loaded(input_ids=ids, attention_mask=am).last_hidden_state
    assert rel(got, want) < LM_TOL
    assert counted["rotary_attention"] == 2


def test_lora_lm_restore_through_peft_model(counted):
    model, ref = wrapped_pair(EsmModel, "wrap_first")
    ids, am = tokens(8)
    restore(model)  # restore(PeftModel) undoes accelerate on the wrapped model
    assert not is_accelerated(model) and not is_accelerated(model.get_base_model())
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=am).last_hidden_state
        want = ref(input_ids=ids, attention_mask=am).last_hidden_state
    assert counted["rotary_attention"] == 0
    assert torch.equal(got, want)


# ------------------------------------------------------------------------------------------------
# fair-esm ESM2
# ------------------------------------------------------------------------------------------------


def test_lora_fair_esm2_forward_and_gradients(counted):
    esm = pytest.importorskip("esm")
    base = esm.model.esm2.ESM2(num_layers=2, embed_dim=48, attention_heads=2,
                               alphabet=esm.data.Alphabet.from_architecture("ESM-1b"))  # fmt: skip
    randomize_(base.eval(), seed=2)
    cfg = lora_config(("q_proj", "v_proj"))
    ref = randomize_lora_(peft.get_peft_model(copy.deepcopy(base), cfg))
    model = peft.get_peft_model(accelerate(copy.deepcopy(base)), lora_config(("q_proj", "v_proj")))
    model.load_state_dict(ref.state_dict())
    ids, _ = tokens(4)
    ids[1, 9:] = 1
    with torch.no_grad():
        want = ref.base_model.model(ids)["logits"]
        got = model.base_model.model(ids)["logits"]
        with ref.disable_adapter():
            no_lora = ref.base_model.model(ids)["logits"]
    assert counted["rotary_attention"] == 2
    assert rel(want, no_lora) > 1e-2
    assert rel(got, want) < LM_TOL
    ref.base_model.model(ids)["logits"].square().mean().backward()
    model.base_model.model(ids)["logits"].square().mean().backward()
    want_g, got_g = lora_named(ref), lora_named(model)
    assert len(got_g) == 8
    for n, p in got_g.items():
        assert rel(p.grad, want_g[n].grad) < GRAD_TOL, n


# ------------------------------------------------------------------------------------------------
# transformers EsmForProteinFolding
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folding():
    model = hf_folding_model(REDUCED_TRUNK, seed=3)
    model.esm.float()
    return model


def fold_inputs(lengths=(15, 10), seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return encode([random_sequence(n, gen) for n in lengths])


def _positions(model, aatype, mask):
    return model(input_ids=aatype, attention_mask=mask, num_recycles=0)["positions"][-1]


@pytest.mark.parametrize("targets", [("query", "value"), ("query", "value", "linear_q", "linear_v")],
                         ids=["lm_only", "lm_trunk_and_ipa"])  # fmt: skip
@pytest.mark.parametrize("order", ["accelerate_first", "wrap_first"])
def test_lora_folding_forward_matches(folding, counted, targets, order, monkeypatch):
    """LoRA on the LM's query/value (fast path calls them as modules) and, in the second case, also on every
    ``linear_q`` / ``linear_v`` (triangle attentions: the block falls back to its original code; the IPA's
    ``linear_q``: the fast structure module calls it as a module)."""
    from esmfold_fast import structure_module as sm

    ipa_forward = sm.InvariantPointAttention.forward

    def counting_ipa(*args, **kwargs):
        counted["ipa"] += 1
        return ipa_forward(*args, **kwargs)

    monkeypatch.setattr(sm.InvariantPointAttention, "forward", counting_ipa)
    ref = randomize_lora_(peft.get_peft_model(copy.deepcopy(folding), lora_config(targets)))
    if order == "accelerate_first":
        model = peft.get_peft_model(accelerate(copy.deepcopy(folding)), lora_config(targets))
    else:
        model = accelerate(peft.get_peft_model(copy.deepcopy(folding), lora_config(targets)))
    model.load_state_dict(ref.state_dict())
    aatype, mask = fold_inputs()
    v = mask.bool()
    with torch.no_grad():
        want = _positions(ref, aatype, mask)
        got = _positions(model, aatype, mask)
        with ref.disable_adapter():
            no_lora = _positions(ref, aatype, mask)
    assert counted["rotary_attention"] == folding.config.num_hidden_layers  # the LM ran fast
    assert counted["ipa"] == folding.config.esmfold_config.trunk.structure_module.num_blocks  # and the IPA
    if len(targets) == 4:
        assert counted["triangle_multiplicative_update"] == 0  # wrapped blocks: their original code
        assert any(type(m).__module__.startswith("peft") for m in model.get_base_model().trunk.structure_module.ipa.modules())
    if len(targets) == 2:
        assert counted["triangle_multiplicative_update"] == 2 * len(folding.trunk.blocks)  # the trunk too
    assert (want - no_lora)[v].abs().max() > 1e-2  # the adapters matter
    assert (got - want)[v].abs().max() < FOLD_POS_TOL


def test_lora_folding_gradients_and_merge(folding, counted):
    """transformers detaches the LM's output (``esm_s.detach()``), so LoRA in the LM of a folding model gets no
    gradient in either model; the trainable adapters here are the trunk's and the IPA's ``linear_q`` /
    ``linear_v`` (wrapped trunk blocks run their original code; the fast structure module calls the IPA's
    wrapped ``linear_q`` as a module, under grad)."""
    targets = ("linear_q", "linear_v")
    ref = randomize_lora_(peft.get_peft_model(copy.deepcopy(folding), lora_config(targets)))
    model = accelerate(peft.get_peft_model(copy.deepcopy(folding), lora_config(targets)))
    model.load_state_dict(ref.state_dict())
    aatype, mask = fold_inputs((12,), seed=2)
    _positions(ref, aatype, mask).square().mean().backward()
    _positions(model, aatype, mask).square().mean().backward()
    want, got = lora_named(ref), lora_named(model)
    assert set(got) == set(want) and any(".ipa.linear_q." in n for n in got)
    for n, p in got.items():
        assert p.grad is not None and want[n].grad.abs().max() > 0, n
        assert rel(p.grad, want[n].grad) < 1e-3, (n, rel(p.grad, want[n].grad))
    with torch.no_grad():
        expected = _positions(ref, aatype, mask)
        merged = model.merge_and_unload()
        assert is_accelerated(merged)
        before = counted["triangle_multiplicative_update"]
        assert (_positions(merged, aatype, mask) - expected).abs().max() < FOLD_POS_TOL
    # merged back into plain layers: the trunk blocks run the fast path again, with the merged weights
    assert counted["triangle_multiplicative_update"] - before == 2 * len(folding.trunk.blocks)
