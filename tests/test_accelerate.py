"""``esmfold_fast.accelerate`` / ``restore`` on the models users already have (issue 9 items 1, 2, 4, 6).

Tiny randomly initialised peers (every parameter randomised): transformers ``EsmModel``, ``EsmForMaskedLM``,
``EsmForSequenceClassification``, ``EsmForTokenClassification``, ``EsmForProteinFolding`` and fair-esm ``ESM2``
(and a fair-esm ``ESMFold`` stand-in). Every comparison is against the same model before ``accelerate`` (or a
deep copy that never was accelerated). A counting backend proves the fast path ran, so a silent fallback to the
original code cannot pass a parity test.
"""

from __future__ import annotations

import collections
import copy
import gc

import pytest
import torch
from torch import nn

from _esmfold_hf import REDUCED_TRUNK, encode, hf_folding_model, random_sequence
from _util import randomize_
from esmfold_fast import backend as _backend
from esmfold_fast import accelerate, restore
from esmfold_fast.dropin import is_accelerated
from esmfold_fast.alphabet import Alphabet
from transformers import (
    EsmConfig,
    EsmForMaskedLM,
    EsmForSequenceClassification,
    EsmForTokenClassification,
    EsmModel,
)

OPS = ("layer_norm", "rotary_attention", "triangle_attention", "triangle_multiplicative_update")
LM_TOL = 1e-5  # relative, fp32 logits / hidden states
FOLD_POS_TOL = 1e-3  # Angstrom, fp32 positions, one trunk pass


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def counted(monkeypatch):
    """The ``torch`` backend with every op call counted (``auto`` on the CPU resolves to it)."""
    base = _backend.get_backend("torch")
    counts: collections.Counter = collections.Counter()

    def wrap(name, fn):
        def op(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)

        op.__dict__.update(fn.__dict__)  # supports_add_into_z
        return op

    fake = _backend.Backend(name="torch", **{n: wrap(n, getattr(base, n)) for n in OPS})
    monkeypatch.setitem(_backend._CACHE, "torch", fake)
    return counts


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def lm_config(**overrides) -> EsmConfig:
    kw = dict(
        vocab_size=33, hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96,
        position_embedding_type="rotary", token_dropout=True, pad_token_id=1, mask_token_id=32,
        max_position_embeddings=64, emb_layer_norm_before=False, vocab_list=Alphabet().all_toks,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3,
    )  # fmt: skip
    kw.update(overrides)
    return EsmConfig(**kw)


def lm(cls=EsmForMaskedLM, seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    model = cls(lm_config(**overrides)).eval()
    return randomize_(model, seed=seed)


def tokens(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two ESM-2 token rows (cls ... eos), the second padded, one <mask>: [2, 13] and its attention mask."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 24, (2, 13), generator=gen)
    ids[:, 0] = 0
    ids[0, -1] = 2
    ids[1, 8] = 2
    ids[1, 9:] = 1
    ids[0, 3] = 32
    return ids, (ids != 1).long()


def storage(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {n: (id(p), p.data_ptr()) for n, p in model.named_parameters()}


def outputs_close(a, b, tol: float) -> None:
    """Same output class and keys; every tensor within ``tol`` relative (tuples element by element)."""
    assert type(a) is type(b)
    keys_a = list(a.keys()) if hasattr(a, "keys") else None
    assert keys_a == (list(b.keys()) if hasattr(b, "keys") else None)
    for key in keys_a or []:
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor):
            assert x.shape == y.shape and x.dtype == y.dtype, key
            assert rel(x, y) < tol, (key, rel(x, y))
        elif isinstance(x, tuple):
            assert len(x) == len(y), key
            for i, (u, v) in enumerate(zip(x, y)):
                assert rel(u, v) < tol, (key, i, rel(u, v))


def outputs_equal(a, b) -> None:
    assert type(a) is type(b) and list(a.keys()) == list(b.keys())
    for key in a.keys():
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), key
        elif isinstance(x, tuple):
            assert all(torch.equal(u, v) for u, v in zip(x, y)), key


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


# ------------------------------------------------------------------------------------------------
# API: supported classes, errors, in place, shared storage, restore
# ------------------------------------------------------------------------------------------------


def test_unsupported_class_raises_one_line():
    with pytest.raises(TypeError) as err:
        accelerate(nn.Linear(3, 3))
    msg = str(err.value)
    assert "\n" not in msg
    assert "torch.nn.modules.linear.Linear" in msg
    for name in ("EsmForProteinFolding", "EsmModel", "EsmForMaskedLM", "EsmForSequenceClassification",
                 "EsmForTokenClassification", "ESM2"):  # fmt: skip
        assert name in msg


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="unknown backend"):
        accelerate(lm(EsmModel), backend="cuda-magic")


@pytest.mark.parametrize("cls", [EsmModel, EsmForMaskedLM, EsmForSequenceClassification, EsmForTokenClassification])
def test_lm_classes_parity_types_restore(cls, counted):
    model = lm(cls)
    ids, am = tokens()
    before = storage(model)
    keys = list(model.state_dict())
    with torch.no_grad():
        ref = model(ids, attention_mask=am, output_hidden_states=True)
        assert accelerate(model) is model
        out = model(ids, attention_mask=am, output_hidden_states=True)
    assert counted["rotary_attention"] == model.config.num_hidden_layers  # the fast core ran in every layer
    outputs_close(out, ref, LM_TOL)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert storage(model) == before and list(model.state_dict()) == keys
    assert is_accelerated(model)
    assert restore(model) is model and not is_accelerated(model)
    with torch.no_grad():
        again = model(ids, attention_mask=am, output_hidden_states=True)
    outputs_equal(again, ref)  # bit for bit


def test_lm_absolute_positions_and_no_mask(counted):
    model = lm(EsmModel, position_embedding_type="absolute", token_dropout=False)
    ids, _ = tokens(1)
    ids[1, 9:] = 5  # no padding at all: no attention mask
    with torch.no_grad():
        ref = model(ids)
        accelerate(model)
        out = model(ids)
    assert counted["rotary_attention"] == 2
    outputs_close(out, ref, LM_TOL)


def test_lm_chunked_feed_forward(counted):
    """transformers' mixin check: ``chunk_size_feed_forward`` does not change the outputs (the feed-forward is
    the host's own code, chunked or not)."""
    model = lm(EsmForMaskedLM, chunk_size_feed_forward=3)
    plain = lm(EsmForMaskedLM)
    ids, am = tokens(16)
    with torch.no_grad():
        ref = plain(ids, attention_mask=am).logits
        accelerate(model)
        out = model(ids, attention_mask=am).logits
    assert counted["rotary_attention"] == 2
    assert rel(out, ref) < LM_TOL


def test_lm_return_dict_false_and_selected_hidden_states():
    model = lm(EsmForMaskedLM)
    ids, am = tokens(2)
    with torch.no_grad():
        ref = model(ids, attention_mask=am, output_hidden_states=True, return_dict=False)
        accelerate(model)
        out = model(ids, attention_mask=am, output_hidden_states=True, return_dict=False)
    assert type(out) is tuple and len(out) == len(ref)
    assert rel(out[0], ref[0]) < LM_TOL
    assert all(rel(a, b) < LM_TOL for a, b in zip(out[1], ref[1]))


def test_lm_output_attentions_fall_back_to_the_original(counted):
    model = lm(EsmForMaskedLM, attn_implementation="eager")
    ids, am = tokens(3)
    with torch.no_grad():
        ref = model(ids, attention_mask=am, output_attentions=True)
        contacts = model.predict_contacts(ids, am)
        accelerate(model)
        out = model(ids, attention_mask=am, output_attentions=True)
        contacts2 = model.predict_contacts(ids, am)
    assert counted["rotary_attention"] == 0  # the original ran for both calls
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 2, 13, 13)
    outputs_equal(out, ref)
    assert torch.equal(contacts, contacts2)


def test_lm_feed_forward_runs_fast_only_behind_a_fast_attention(counted, monkeypatch):
    """The one-pass GELU replaces ESM's five-pass formula in layers whose attention took the fast path, and
    only there: a call that falls back (attention probabilities asked for) runs ESM's own GELU in every layer."""
    from transformers.models.esm import modeling_esm

    calls = collections.Counter()
    real_gelu = modeling_esm.gelu

    def counting_gelu(x):
        calls["esm_gelu"] += 1
        return real_gelu(x)

    monkeypatch.setattr(modeling_esm, "gelu", counting_gelu)
    ref = lm(EsmModel, attn_implementation="eager")
    model = accelerate(copy.deepcopy(ref))
    ids, am = tokens(5)
    with torch.no_grad():
        expected = ref(ids, attention_mask=am).last_hidden_state
        calls.clear()
        out = model(ids, attention_mask=am).last_hidden_state
        assert calls["esm_gelu"] == 0 and counted["rotary_attention"] == 2
        assert rel(out, expected) < LM_TOL
        fallback = model(ids, attention_mask=am, output_attentions=True).last_hidden_state
        assert calls["esm_gelu"] == 2 and torch.equal(fallback, expected)


def test_lm_per_sequence_position_ids_fall_back(counted):
    ref = lm(EsmModel)
    model = accelerate(copy.deepcopy(ref))
    ids, am = tokens(4)
    pos = torch.stack([torch.arange(13), torch.arange(13) + 2])  # per-sequence rotary positions
    with torch.no_grad():
        out = model(ids, attention_mask=am, position_ids=pos).last_hidden_state
        assert counted["rotary_attention"] == 0
        assert torch.equal(out, ref(ids, attention_mask=am, position_ids=pos).last_hidden_state)
        shared = 2 * torch.arange(13)[None]  # one row of positions for the whole batch: fast, and honoured
        out = model(ids, attention_mask=am, position_ids=shared).last_hidden_state
        assert counted["rotary_attention"] == 2
        assert rel(out, ref(ids, attention_mask=am, position_ids=shared).last_hidden_state) < LM_TOL
        assert rel(out, ref(ids, attention_mask=am).last_hidden_state) > 1e-3


def test_lm_live_hyperparameters_and_weights(counted):
    model = lm(EsmForMaskedLM)
    twin = copy.deepcopy(model)  # never accelerated
    ids, am = tokens(5)
    accelerate(model)
    with torch.no_grad():
        first = model(ids, attention_mask=am).logits
        for m in (model, twin):
            m.esm.encoder.layer[0].attention.LayerNorm.eps = 0.5
            m.esm.rotary_embeddings.inv_freq.mul_(0.5)
        changed = model(ids, attention_mask=am).logits
        assert rel(changed, first) > 1e-3  # the change is seen ...
        assert rel(changed, twin(ids, attention_mask=am).logits) < LM_TOL  # ... as the original sees it
        other = lm(EsmForMaskedLM, seed=7)
        for m in (model, twin):
            m.load_state_dict(other.state_dict())
        assert rel(model(ids, attention_mask=am).logits, twin(ids, attention_mask=am).logits) < LM_TOL
    # dropout toggled after accelerate: on in train mode, off in eval
    model.esm.encoder.layer[1].output.dropout.p = 0.5
    model.train()
    with torch.no_grad():
        a, b = model(ids, attention_mask=am).logits, model(ids, attention_mask=am).logits
    assert not torch.equal(a, b)
    model.eval()
    with torch.no_grad():
        a, b = model(ids, attention_mask=am).logits, model(ids, attention_mask=am).logits
    assert torch.equal(a, b)
    assert counted["rotary_attention"] > 0


def test_lm_attention_dropout_in_training_falls_back(counted):
    model = accelerate(lm(EsmModel, attention_probs_dropout_prob=0.3)).train()
    ids, am = tokens(6)
    with torch.no_grad():
        model(ids, attention_mask=am)
    assert counted["rotary_attention"] == 0
    model.eval()
    with torch.no_grad():
        model(ids, attention_mask=am)
    assert counted["rotary_attention"] == 2


def test_lm_batched_equals_single_and_deterministic():
    model = accelerate(lm(EsmForMaskedLM))
    ids, am = tokens(8)
    with torch.no_grad():
        batch = model(ids, attention_mask=am).logits
        assert torch.equal(batch, model(ids, attention_mask=am).logits)  # deterministic
        one = model(ids[1:, :9], attention_mask=am[1:, :9]).logits
        zero = model(ids[:1], attention_mask=am[:1]).logits
    assert rel(batch[1, :9], one[0]) < LM_TOL
    assert rel(batch[0], zero[0]) < LM_TOL


def test_lm_gradients_train_mode_and_checkpointing(counted):
    ref = lm(EsmForMaskedLM).train()
    model = accelerate(copy.deepcopy(ref))
    ids, am = tokens(9)
    ref(ids, attention_mask=am, labels=ids).loss.backward()
    loss = model(ids, attention_mask=am, labels=ids).loss
    loss.backward()
    assert counted["rotary_attention"] == 2
    grads = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    assert len(grads) > 10
    for n, p in model.named_parameters():
        if n in grads:
            assert p.grad is not None, n
            assert rel(p.grad, grads[n]) < 1e-4, (n, rel(p.grad, grads[n]))
    model.zero_grad()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model(ids, attention_mask=am, labels=ids).loss.backward()
    assert counted["rotary_attention"] == 2 + 4  # forward and recompute both fast
    for n, p in model.named_parameters():
        if n in grads:
            assert rel(p.grad, grads[n]) < 1e-4, n


def test_lm_save_pretrained_round_trip_and_moves(tmp_path):
    model = lm(EsmForMaskedLM)
    ids, am = tokens(10)
    with torch.no_grad():
        ref = model(ids, attention_mask=am).logits
    accelerate(model)
    model.save_pretrained(tmp_path)
    loaded = EsmForMaskedLM.from_pretrained(tmp_path).eval()
    assert not is_accelerated(loaded)
    with torch.no_grad():
        assert torch.equal(loaded(ids, attention_mask=am).logits, ref)
        model.double()
        out64 = model(ids, attention_mask=am).logits
        assert out64.dtype == torch.float64
        ref64 = loaded.double()(ids, attention_mask=am).logits
        # transformers rotates q and k in float32 even in a float64 model; that rounding is the whole difference
        assert rel(out64, ref64) < 1e-6
        model.half()  # fp16 on the CPU runs, close to the original's fp16
        out16 = model(ids, attention_mask=am).logits
        ref16 = loaded.half()(ids, attention_mask=am).logits
    assert out16.dtype == torch.float16 and rel(out16, ref16) < 2e-2


def test_accelerate_makes_no_copy_of_the_weights():
    model = lm(EsmForMaskedLM, hidden_size=256, num_hidden_layers=6, num_attention_heads=4, intermediate_size=1024)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    before_ptrs = storage(model)
    gc.collect()
    before = rss_bytes()
    accelerate(model)
    gc.collect()
    assert rss_bytes() - before < 0.1 * weights
    assert storage(model) == before_ptrs


def test_accelerate_twice_then_restore_once():
    model = lm(EsmModel)
    ids, am = tokens(11)
    with torch.no_grad():
        ref = model(ids, attention_mask=am)
    accelerate(model)
    accelerate(model, backend="torch")
    twin = copy.deepcopy(model)  # a copy of an accelerated model is accelerated, and restores on its own
    attn = twin.encoder.layer[0].attention.self
    assert is_accelerated(twin) and attn.forward.__self__ is attn
    restore(twin)
    assert is_accelerated(model) and not is_accelerated(twin)
    restore(model)
    assert not is_accelerated(model)
    assert all("_esmfold_fast_patches" not in m.__dict__ and "forward" not in m.__dict__ for m in model.modules())
    with torch.no_grad():
        outputs_equal(model(ids, attention_mask=am), ref)
        outputs_equal(twin(ids, attention_mask=am), ref)


def test_triton_backend_under_the_interpreter():
    model = lm(EsmModel)
    ids, am = tokens(12)
    with torch.no_grad():
        ref = model(ids, attention_mask=am).last_hidden_state
        accelerate(model, backend="triton")
        out = model(ids, attention_mask=am).last_hidden_state
    assert rel(out, ref) < LM_TOL


# ------------------------------------------------------------------------------------------------
# fair-esm ESM2
# ------------------------------------------------------------------------------------------------


def fair_esm2(seed: int = 0):
    esm = pytest.importorskip("esm")
    from esm.model.esm2 import ESM2 as FairESM2

    torch.manual_seed(seed)
    model = FairESM2(num_layers=2, embed_dim=48, attention_heads=2,
                     alphabet=esm.data.Alphabet.from_architecture("ESM-1b"), token_dropout=True).eval()  # fmt: skip
    return randomize_(model, seed=seed)


def test_fair_esm2_parity_restore_and_contacts(counted):
    model = fair_esm2()
    ids, _ = tokens(13)
    before = storage(model)
    with torch.no_grad():
        ref = model(ids, repr_layers=[0, 1, 2])
        ref_c = model(ids, repr_layers=[2], return_contacts=True)
        assert accelerate(model) is model
        out = model(ids, repr_layers=[0, 1, 2])
        assert counted["rotary_attention"] == 2
        out_c = model(ids, repr_layers=[2], return_contacts=True)  # head weights: the original's code
        assert counted["rotary_attention"] == 2
    assert sorted(out) == sorted(ref) and sorted(out["representations"]) == [0, 1, 2]
    assert rel(out["logits"], ref["logits"]) < LM_TOL
    for i in range(3):
        assert rel(out["representations"][i], ref["representations"][i]) < LM_TOL
    assert sorted(out_c) == sorted(ref_c)
    for key in ("logits", "attentions", "contacts"):
        assert torch.equal(out_c[key], ref_c[key])
    assert storage(model) == before
    restore(model)
    with torch.no_grad():
        again = model(ids, repr_layers=[0, 1, 2])
    assert torch.equal(again["logits"], ref["logits"])


def test_fair_esm2_live_and_gradients(counted):
    ref = fair_esm2(seed=1)
    model = accelerate(copy.deepcopy(ref))
    ids, _ = tokens(14)
    with torch.no_grad():
        for m in (model, ref):
            m.layers[0].self_attn_layer_norm.eps = 0.5
            m.layers[1].self_attn.out_proj.weight.mul_(2.0)
        assert rel(model(ids)["logits"], ref(ids)["logits"]) < LM_TOL
    ref.train()
    model.train()
    ref(ids)["logits"].square().mean().backward()
    model(ids)["logits"].square().mean().backward()
    assert counted["rotary_attention"] >= 4
    for (n, p), q in zip(ref.named_parameters(), model.parameters()):
        if p.grad is not None:
            assert rel(q.grad, p.grad) < 1e-4, n


_FAIR_LAYOUT = {  # transformers class -> (fair-esm / openfold module, class name) of the same layout
    "EsmFoldTriangularSelfAttentionBlock": ("esm.esmfold.v1.tri_self_attn_block", "TriangularSelfAttentionBlock"),
    "EsmFoldSelfAttention": ("esm.esmfold.v1.misc", "Attention"),
    "EsmFoldDropout": ("esm.esmfold.v1.misc", "Dropout"),
    "EsmFoldSequenceToPair": ("esm.esmfold.v1.misc", "SequenceToPair"),
    "EsmFoldPairToSequence": ("esm.esmfold.v1.misc", "PairToSequence"),
    "EsmFoldResidueMLP": ("esm.esmfold.v1.misc", "ResidueMLP"),
    "EsmFoldAttention": ("openfold.model.primitives", "Attention"),
    "EsmFoldLinear": ("openfold.model.primitives", "Linear"),
    "EsmFoldLayerNorm": ("openfold.model.primitives", "LayerNorm"),
}


def fair_esmfold_stand_in(seed: int = 0) -> nn.Module:
    """fair-esm's ``ESMFold`` needs openfold, which cannot be installed; this stand-in has its module layout:
    ``esm`` (a fair-esm ESM2), ``esm_s_combine`` and a ``trunk`` whose blocks are fair-esm's
    ``TriangularSelfAttentionBlock`` made of fair-esm's and openfold's modules (same attribute and child names
    and state-dict keys as transformers' port, which provides the code)."""
    hf = hf_folding_model(REDUCED_TRUNK, seed=seed)
    standins: dict[type, type] = {}
    for block in hf.trunk.blocks:
        for m in block.modules():
            cls = type(m)
            name = cls.__name__
            if name == "EsmFoldTriangleMultiplicativeUpdate":
                direction = "Outgoing" if m._outgoing else "Incoming"
                where = ("openfold.model.triangular_multiplicative_update", f"TriangleMultiplication{direction}")
            elif name == "EsmFoldTriangleAttention":
                where = ("openfold.model.triangular_attention",
                         "TriangleAttentionStartingNode" if m.starting else "TriangleAttentionEndingNode")  # fmt: skip
            elif name in _FAIR_LAYOUT:
                where = _FAIR_LAYOUT[name]
            else:
                continue
            key = (cls, where)
            if key not in standins:
                standins[key] = type(where[1], (cls,), {"__module__": where[0]})
            m.__class__ = standins[key]

    class ESMFold(nn.Module):
        def __init__(self):
            super().__init__()
            self.esm = fair_esm2(seed=seed)
            self.esm_s_combine = nn.Parameter(torch.zeros(3))
            self.trunk = hf.trunk

    return ESMFold().eval()


def test_fair_esmfold_stand_in(counted):
    model = fair_esmfold_stand_in(seed=2)
    ids, _ = tokens(15)
    gen = torch.Generator().manual_seed(3)
    c_s, c_z = REDUCED_TRUNK["sequence_state_dim"], REDUCED_TRUNK["pairwise_state_dim"]
    s0, z0 = torch.randn(2, 11, c_s, generator=gen), torch.randn(2, 11, 11, c_z, generator=gen)
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 8:] = 0

    def run():
        with torch.no_grad():
            reps = model.esm(ids, repr_layers=range(3))["representations"]
            s, z = s0, z0
            for block in model.trunk.blocks:
                s, z = block(s, z, mask=mask, chunk_size=None)
        return reps, s, z

    ref = run()
    before = storage(model)
    assert accelerate(model) is model
    out = run()
    assert counted["rotary_attention"] == 2
    assert counted["triangle_multiplicative_update"] == 2 * len(model.trunk.blocks)
    assert all(rel(out[0][i], ref[0][i]) < LM_TOL for i in range(3))
    assert rel(out[1], ref[1]) < 1e-4 and rel(out[2], ref[2]) < 1e-4
    assert storage(model) == before
    restore(model)
    again = run()
    assert not is_accelerated(model)
    assert torch.equal(again[1], ref[1]) and torch.equal(again[2], ref[2])


# ------------------------------------------------------------------------------------------------
# transformers EsmForProteinFolding
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folding():
    model = hf_folding_model(REDUCED_TRUNK, seed=3)
    model.esm.float()  # fp32 LM so the parity bound is fp32's (fp16 on the CPU is checked separately)
    return model


def fold_inputs(lengths=(17, 11), seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    seqs = [random_sequence(n, gen) for n in lengths]
    return seqs, *encode(seqs)


def test_folding_parity_types_restore_storage(folding, counted, monkeypatch):
    from esmfold_fast import structure_module as sm

    ipa_forward = sm.InvariantPointAttention.forward

    def counting_ipa(*args, **kwargs):
        counted["ipa"] += 1
        return ipa_forward(*args, **kwargs)

    monkeypatch.setattr(sm.InvariantPointAttention, "forward", counting_ipa)
    model = copy.deepcopy(folding)
    seqs, aatype, mask = fold_inputs()
    before = storage(model)
    keys = list(model.state_dict())
    with torch.no_grad():
        ref = model(input_ids=aatype, attention_mask=mask, num_recycles=0)
        assert accelerate(model) is model
        out = model(input_ids=aatype, attention_mask=mask, num_recycles=0)
    blocks = len(model.trunk.blocks)
    assert counted["triangle_multiplicative_update"] == 2 * blocks
    assert counted["rotary_attention"] == model.config.num_hidden_layers  # the LM too
    assert counted["ipa"] == model.config.esmfold_config.trunk.structure_module.num_blocks  # and the structure module
    assert type(out) is type(ref) and list(out.keys()) == list(ref.keys())
    v = mask.bool()
    err = (out["positions"][-1] - ref["positions"][-1])[v].abs().max().item()
    assert ref["positions"][-1][v].abs().mean() > 1.0  # not degenerate
    assert err < FOLD_POS_TOL, err
    assert rel(out["s_z"], ref["s_z"]) < 1e-4 and rel(out["s_s"], ref["s_s"]) < 1e-4
    assert (out["plddt"] - ref["plddt"]).abs().max() < 1e-4
    assert (out["ptm"] - ref["ptm"]).abs().max() < 1e-5
    for key in out.keys():
        assert out[key].shape == ref[key].shape and out[key].dtype == ref[key].dtype, key
    assert storage(model) == before and list(model.state_dict()) == keys
    restore(model)
    with torch.no_grad():
        again = model(input_ids=aatype, attention_mask=mask, num_recycles=0)
    for key in ref.keys():
        assert torch.equal(again[key], ref[key]), key


def test_folding_infer_pdb_batched_and_deterministic(folding):
    model = copy.deepcopy(folding)
    seqs, _, _ = fold_inputs((13, 9), seed=1)
    ref_out = model.infer(seqs)
    ref = model.output_to_pdb(ref_out)
    accelerate(model)
    out = model.infer(seqs)
    assert type(out) is type(ref_out) and list(out.keys()) == list(ref_out.keys())
    pdbs = model.infer_pdbs(seqs)
    assert model.output_to_pdb(out) == pdbs  # deterministic
    assert [p.count("\n") for p in pdbs] == [p.count("\n") for p in ref]
    assert (out["positions"][-1] - ref_out["positions"][-1])[:, :9].abs().max() < FOLD_POS_TOL
    # batched vs single: the padded batch folds each sequence as it folds alone
    pdb = model.infer_pdb(seqs[1])
    assert pdb.count("\nATOM") == pdbs[1].count("\nATOM")
    single = model.infer(seqs[1])
    assert (out["positions"][-1, 1, :9] - single["positions"][-1, 0]).abs().max() < FOLD_POS_TOL


def test_folding_live_eps_weights_chunk_size(folding, counted):
    model = copy.deepcopy(folding)
    twin = copy.deepcopy(folding)  # never accelerated
    _, aatype, mask = fold_inputs((12,), seed=2)
    accelerate(model)

    def pos(m):
        with torch.no_grad():
            return m(input_ids=aatype, attention_mask=mask, num_recycles=0)["positions"][-1]

    first = pos(model)
    for m in (model, twin):
        b = m.trunk.blocks[0]
        b.layernorm_1.eps = 0.3
        b.tri_att_start.layer_norm.eps = 0.3
        b.tri_mul_out.layer_norm_in.eps = b.tri_mul_out.layer_norm_out.eps = 0.3
        b.mlp_pair.mlp[0].eps = 0.3
        m.trunk.structure_module.config.trans_scale_factor = 7  # read by the structure module at call time
        m.trunk.structure_module.ipa.config.epsilon = 1e-3
    calls = counted["triangle_multiplicative_update"]
    changed = pos(model)
    assert counted["triangle_multiplicative_update"] == calls + 2 * len(model.trunk.blocks)  # still fast
    assert (changed - first).abs().max() > 1e-2
    assert (changed - pos(twin)).abs().max() < FOLD_POS_TOL
    # one LayerNorm eps of a triangle multiplication alone: the fused op takes one eps, so that block falls back
    for m in (model, twin):
        m.trunk.blocks[1].tri_mul_in.layer_norm_out.eps = 0.2
    assert (pos(model) - pos(twin)).abs().max() < FOLD_POS_TOL
    # weights reloaded in place
    other = hf_folding_model(REDUCED_TRUNK, seed=9)
    other.esm.float()
    for m in (model, twin):
        m.load_state_dict(other.state_dict())
    assert (pos(model) - pos(twin)).abs().max() < FOLD_POS_TOL
    # chunk_size set after accelerate is used (and gives the same structure)
    unchunked = pos(model)
    model.trunk.set_chunk_size(3)
    assert (pos(model) - unchunked).abs().max() < 1e-4


def test_folding_dropout_toggle_falls_back_in_training(folding, counted):
    model = accelerate(copy.deepcopy(folding))
    _, aatype, mask = fold_inputs((10,), seed=3)
    for block in model.trunk.blocks:
        block.drop.p = 0.2
        block.row_drop.dropout.p = block.col_drop.dropout.p = 0.4
    model.train()
    with torch.no_grad():
        a = model(input_ids=aatype, attention_mask=mask, num_recycles=0)["positions"]
        b = model(input_ids=aatype, attention_mask=mask, num_recycles=0)["positions"]
    assert not torch.equal(a, b)  # dropout is on
    assert counted["triangle_multiplicative_update"] == 0  # the original blocks ran
    model.eval()
    with torch.no_grad():
        a = model(input_ids=aatype, attention_mask=mask, num_recycles=0)["positions"]
        b = model(input_ids=aatype, attention_mask=mask, num_recycles=0)["positions"]
    assert torch.equal(a, b)
    assert counted["triangle_multiplicative_update"] > 0


def test_folding_gradients_match(folding, counted):
    """Float64, so the comparison checks the gradient math rather than fp32 rounding (amplified through eight
    structure-module blocks it reaches 3e-3 relative in fp32); transformers keeps its rigid frames in float32
    even in a float64 model, which is the 1e-6 floor left here."""
    ref = copy.deepcopy(folding).double()
    model = accelerate(copy.deepcopy(folding).double())
    _, aatype, mask = fold_inputs((9, 7), seed=4)
    for m in (ref, model):
        m.trunk.structure_module.ipa_dropout.p = 0.0  # train mode, every dropout off: deterministic
        m.trunk.structure_module.transition.dropout.p = 0.0
        m.train()
        m.esm.eval()  # the frozen LM's own dropout (p = 0.1 in its config) would draw random masks
        with torch.enable_grad():
            out = m(input_ids=aatype, attention_mask=mask, num_recycles=0)
            (out["positions"][-1].square().mean() + out["s_z"].square().mean()).backward()
    assert counted["triangle_multiplicative_update"] == 2 * len(model.trunk.blocks)
    n_checked = 0
    scale = max(p.grad.abs().max().item() for p in ref.parameters() if p.grad is not None)
    for (n, p), q in zip(ref.named_parameters(), model.parameters()):
        if n.startswith("trunk.blocks.") and p.grad is not None:
            assert q.grad is not None, n
            # relative to the parameter's gradient, plus a floor for gradients that are zero in exact arithmetic
            # (e.g. a LayerNorm bias feeding a softmax bias that is constant along the keys)
            err = (q.grad - p.grad).abs().max().item()
            assert err <= 1e-5 * p.grad.abs().max().item() + 1e-8 * scale, (n, err, p.grad.abs().max().item())
            n_checked += 1
    assert n_checked > 40
    assert all(p.grad is None for p in model.esm.parameters())  # the LM stays frozen, as transformers has it


def test_folding_fp16_lm_on_cpu(counted):
    model = hf_folding_model(REDUCED_TRUNK, seed=5)  # fp16_esm: transformers runs its LM in fp16
    assert model.esm.embeddings.word_embeddings.weight.dtype == torch.float16
    _, aatype, mask = fold_inputs((11,), seed=5)
    with torch.no_grad():
        ref = model(input_ids=aatype, attention_mask=mask, num_recycles=0)["positions"][-1]
        accelerate(model)
        out = model(input_ids=aatype, attention_mask=mask, num_recycles=0)["positions"][-1]
    assert counted["rotary_attention"] == model.config.num_hidden_layers
    assert (out - ref).abs().max() < 0.05  # fp16 LM rounding, amplified by the trunk


class _LoRALike(nn.Module):
    """A wrapped Linear as PEFT makes one: the base layer plus a low-rank delta."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base_layer = base
        self.down = nn.Linear(base.in_features, 2, bias=False)
        self.up = nn.Linear(2, base.out_features, bias=False)
        randomize_(self.down, seed=1)
        randomize_(self.up, seed=2)

    def forward(self, x):
        return self.base_layer(x) + self.up(self.down(x))


def test_folding_wrapped_children_and_hooks_are_honoured(folding, counted):
    model = accelerate(copy.deepcopy(folding))
    twin = copy.deepcopy(folding)
    _, aatype, mask = fold_inputs((10,), seed=6)

    def pos(m):
        with torch.no_grad():
            return m(input_ids=aatype, attention_mask=mask, num_recycles=0)["positions"][-1]

    plain = pos(model)
    for m in (model, twin):
        m.trunk.blocks[0].tri_mul_out.linear_z = _LoRALike(m.trunk.blocks[0].tri_mul_out.linear_z)
    wrapped = pos(model)
    assert (wrapped - plain).abs().max() > 1e-2
    assert (wrapped - pos(twin)).abs().max() < FOLD_POS_TOL
    seen = []
    model.trunk.blocks[1].tri_att_end.mha.linear_g.register_forward_hook(lambda *a: seen.append(1))
    pos(model)
    assert seen  # the hooked block ran its original code, which calls the child
    assert counted["triangle_multiplicative_update"] > 0  # the untouched blocks ran fast


def test_folding_block_called_directly_leaves_inputs_alone(folding):
    model = accelerate(copy.deepcopy(folding))
    block = model.trunk.blocks[0]
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(1, 9, block.config.sequence_state_dim, generator=gen)
    z = torch.randn(1, 9, 9, block.config.pairwise_state_dim, generator=gen)
    z0 = z.clone()
    with torch.no_grad():
        s1, z1 = block(s, z, mask=torch.ones(1, 9))
        restore(model)
        s2, z2 = block(s, z, mask=torch.ones(1, 9))
    assert torch.equal(z, z0)
    assert rel(s1, s2) < 1e-4 and rel(z1, z2) < 1e-4
    accelerate(model)
    block.double()  # moved and cast after accelerate: float64 end to end, agreeing to float64 rounding
    with torch.no_grad():
        s3, z3 = block(s.double(), z.double(), mask=torch.ones(1, 9))
        restore(model)
        s4, z4 = block(s.double(), z.double(), mask=torch.ones(1, 9))
    assert z3.dtype == torch.float64 and rel(s3, s4) < 1e-10 and rel(z3, z4) < 1e-10


def test_package_exports_the_functions():
    import esmfold_fast
    from esmfold_fast import dropin

    assert esmfold_fast.accelerate is dropin.accelerate and esmfold_fast.restore is dropin.restore
    model = lm(EsmModel)
    assert esmfold_fast.accelerate(model) is model and is_accelerated(model)
    assert esmfold_fast.restore(model) is model and not is_accelerated(model)


def test_folding_block_on_the_triton_backend(folding):
    """``backend="triton"`` runs the block's Triton kernels (here through Triton's interpreter)."""
    model = copy.deepcopy(folding)
    block = model.trunk.blocks[0]
    gen = torch.Generator().manual_seed(1)
    s = torch.randn(1, 9, block.config.sequence_state_dim, generator=gen)
    z = torch.randn(1, 9, 9, block.config.pairwise_state_dim, generator=gen)
    mask = torch.ones(1, 9)
    mask[0, 7:] = 0
    with torch.no_grad():
        s_ref, z_ref = block(s, z, mask=mask)
        accelerate(model, backend="triton")
        assert _backend.get_backend("triton").name == "triton"
        s1, z1 = block(s, z, mask=mask)
    assert block.ops.name == "triton"
    assert rel(s1, s_ref) < 1e-4 and rel(z1, z_ref) < 1e-4


def test_folding_structure_module_hook_on_ipa_falls_back(folding, monkeypatch):
    from esmfold_fast import structure_module as sm

    calls = []
    ipa_forward = sm.InvariantPointAttention.forward
    monkeypatch.setattr(sm.InvariantPointAttention, "forward", lambda *a, **k: calls.append(1) or ipa_forward(*a, **k))
    model = accelerate(copy.deepcopy(folding))
    _, aatype, mask = fold_inputs((8,), seed=7)
    seen = []
    model.trunk.structure_module.ipa.register_forward_hook(lambda *a: seen.append(1))
    with torch.no_grad():
        model(input_ids=aatype, attention_mask=mask, num_recycles=0)
    assert len(seen) == model.config.esmfold_config.trunk.structure_module.num_blocks and not calls
