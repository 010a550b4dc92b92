"""ESM-2 parity with fair-esm and transformers, checkpoint loading in every layout, alphabet, errors.

Every peer model is randomised in full (``randomize_``), written in the official on-disk layout and
loaded through ``ESM2.from_pretrained``; outputs must agree within 1e-5 relative error in fp32.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import esm
import pytest
import torch
from _util import DEVICE, max_rel_err, randomize_
from safetensors.torch import save_file

from esmfold_fast.alphabet import Alphabet
from esmfold_fast.config import ESM2Config
from esmfold_fast.checkpoints import CheckpointError, resolve_hf_snapshot, resolve_torch_hub_checkpoint
from esmfold_fast.checkpoints.esm2 import esm2_state_dict_from_transformers, load_esm2_state_dict
from esmfold_fast.esm2 import ESM2

TOL = 1e-5
AA = "LAGVSERTIDPKQNFYMHWC"
# (layers, embed dim, heads): head dims 16 and 24 (the 8M and 35M models' head dims).
SHAPES = [(2, 48, 3), (3, 72, 3)]


def _random_seq(n: int, rng: random.Random) -> str:
    return "".join(rng.choice(AA) for _ in range(n))


def _batch(seed: int = 0) -> torch.Tensor:
    """Two sequences of different lengths (37 and 17 residues), each with <mask> tokens."""
    rng = random.Random(seed)
    a, b = _random_seq(37, rng), _random_seq(17, rng)
    a = a[:5] + "<mask>" + a[6:20] + "<mask>" + a[21:]
    b = b[:3] + "<mask>" + b[4:]
    return Alphabet().get_batch_converter()([("a", a), ("b", b)])[2]


def _fair_esm_model(layers: int, dim: int, heads: int, seed: int, token_dropout: bool = True):
    model = esm.model.esm2.ESM2(
        num_layers=layers, embed_dim=dim, attention_heads=heads, alphabet="ESM-1b", token_dropout=token_dropout
    )
    randomize_(model, seed=seed)
    # fair-esm checkpoints store rotary frequencies rounded in fp16: keep such values, not the defaults.
    for layer in model.layers:
        layer.self_attn.rot_emb.inv_freq.copy_(layer.self_attn.rot_emb.inv_freq.half().float())
    return model.eval()


def _write_fair_esm(model, directory: Path, name: str, regression: bool = True) -> Path:
    """Write ``model`` in fair-esm's raw hub layout: ``<name>.pt`` (+ ``<name>-contact-regression.pt``)."""
    sd = model.state_dict()
    raw = {}
    for key, value in sd.items():
        if key.startswith("contact_head."):
            continue
        prefix = "encoder." if key.startswith("lm_head.") else "encoder.sentence_encoder."
        raw[prefix + key] = value.half() if value.is_floating_point() else value  # official files are fp16
    cfg = argparse.Namespace(
        encoder_layers=model.num_layers,
        encoder_embed_dim=model.embed_dim,
        encoder_ffn_embed_dim=4 * model.embed_dim,
        encoder_attention_heads=model.attention_heads,
        token_dropout=model.token_dropout,
        arch="ESM2",
    )
    path = directory / f"{name}.pt"
    torch.save({"cfg": {"model": cfg}, "model": raw}, path)
    if regression:
        reg = {k: v for k, v in sd.items() if k.startswith("contact_head.")}
        torch.save({"model": reg}, directory / f"{name}-contact-regression.pt")
    return path


def _fp16_roundtrip(model) -> None:
    """Round ``model``'s weights through fp16 so it matches a checkpoint stored in fp16."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())


def _assert_close(ours: dict, ref: dict, layers: int, what: str) -> None:
    for key in ("logits", "attentions", "contacts"):
        if key in ref:
            err = max_rel_err(ours[key], ref[key])
            assert err < TOL, f"{what}: {key} rel err {err:.2e}"
    for layer in range(layers + 1):
        err = max_rel_err(ours["representations"][layer], ref["representations"][layer])
        assert err < TOL, f"{what}: representation {layer} rel err {err:.2e}"


# ------------------------------------------------------------------------------------------------
# alphabet
# ------------------------------------------------------------------------------------------------


def test_alphabet_matches_fair_esm_and_transformers_vocab():
    ours, ref = Alphabet(), esm.data.Alphabet.from_architecture("ESM-1b")
    assert ours.all_toks == ref.all_toks
    assert len(ours) == 33
    for attr in ("padding_idx", "mask_idx", "cls_idx", "eos_idx", "unk_idx"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    assert ours.tok_to_idx == ref.tok_to_idx
    assert ours.get_idx("J") == ref.get_idx("J") == ours.unk_idx
    # transformers' ESM-2 vocab files list the same tokens in the same order.
    assert ours.all_toks[:4] == ["<cls>", "<pad>", "<eos>", "<unk>"] and ours.all_toks[-1] == "<mask>"


@pytest.mark.parametrize("truncation", [None, 9])
def test_batch_converter_matches_fair_esm(truncation):
    rng = random.Random(3)
    batch = [
        ("p1", _random_seq(17, rng)),
        ("p2", "MK<mask>TA-XBUZO." + _random_seq(5, rng)),
        ("p3", "M K <mask>A<null_1>C"),
        ("p4", _random_seq(3, rng)),
    ]
    ours = Alphabet().get_batch_converter(truncation)(batch)
    ref = esm.data.Alphabet.from_architecture("ESM-1b").get_batch_converter(truncation)(batch)
    assert list(ours[0]) == list(ref[0]) and list(ours[1]) == list(ref[1])
    assert ours[2].dtype == ref[2].dtype == torch.int64
    assert torch.equal(ours[2], ref[2])


def test_unknown_character_raises_like_fair_esm():
    ref = esm.data.Alphabet.from_architecture("ESM-1b")
    with pytest.raises(KeyError):
        ref.encode("MKaT")
    with pytest.raises(KeyError, match="'a'"):
        Alphabet().encode("MKaT")


# ------------------------------------------------------------------------------------------------
# fair-esm parity through the raw .pt layout
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layers,dim,heads", SHAPES)
def test_fair_esm_checkpoint_parity(tmp_path, layers, dim, heads):
    ref = _fair_esm_model(layers, dim, heads, seed=layers)
    _fp16_roundtrip(ref)
    path = _write_fair_esm(ref, tmp_path, f"esm2_t{layers}_test")
    model = ESM2.from_pretrained(path)
    assert (model.num_layers, model.embed_dim, model.attention_heads) == (layers, dim, heads)
    assert model.contacts_unavailable is None and not model.training
    tokens = _batch(layers)
    assert (tokens == model.mask_idx).any() and (tokens == model.padding_idx).any()
    with torch.no_grad():
        out = model(tokens, repr_layers=range(layers + 1), return_contacts=True)
        exp = ref(tokens, repr_layers=range(layers + 1), return_contacts=True)
    assert out["logits"].shape == (2, tokens.shape[1], 33)
    assert out["attentions"].shape == (2, layers, heads, tokens.shape[1], tokens.shape[1])
    assert out["contacts"].shape == (2, tokens.shape[1] - 2, tokens.shape[1] - 2)
    _assert_close(out, exp, layers, "fair-esm")
    # Without head weights the fused attention op runs; logits and representations are unchanged.
    with torch.no_grad():
        fast = model(tokens, repr_layers=range(layers + 1))
    assert "attentions" not in fast and "contacts" not in fast
    _assert_close(fast, {k: exp[k] for k in ("logits", "representations")}, layers, "fair-esm fused")


def test_fair_esm_loader_reads_our_fixture_layout(tmp_path):
    """fair-esm's own local loader accepts the files the tests write (the layout is right)."""
    ref = _fair_esm_model(2, 48, 3, seed=5)
    path = _write_fair_esm(ref, tmp_path, "esm2_t2_fixture")
    with torch.serialization.safe_globals([argparse.Namespace]):
        loaded, _ = esm.pretrained.load_model_and_alphabet_local(str(path))
    ours = ESM2.from_pretrained(path)
    tokens = _batch(1)
    with torch.no_grad():
        _assert_close(
            ours(tokens, repr_layers=[0, 1, 2], return_contacts=True),
            loaded.eval()(tokens, repr_layers=[0, 1, 2], return_contacts=True),
            2,
            "fair-esm loader",
        )


def test_missing_contact_regression_loads_but_contacts_raise(tmp_path):
    ref = _fair_esm_model(2, 48, 3, seed=7, token_dropout=False)
    _fp16_roundtrip(ref)
    path = _write_fair_esm(ref, tmp_path, "esm2_t2_noreg", regression=False)
    model = ESM2.from_pretrained(path)
    tokens = _batch(2)
    with torch.no_grad():
        out = model(tokens, repr_layers=[0, 2], need_head_weights=True)
        exp = ref(tokens, repr_layers=[0, 2], need_head_weights=True)
        for key in ("logits", "attentions"):
            assert max_rel_err(out[key], exp[key]) < TOL
        with pytest.raises(RuntimeError, match="esm2_t2_noreg-contact-regression.pt"):
            model(tokens, return_contacts=True)


def test_from_pretrained_half_dtypes_keep_fp32_rotary(tmp_path):
    ref = _fair_esm_model(2, 48, 3, seed=11)
    path = _write_fair_esm(ref, tmp_path, "esm2_t2_dtype")
    stored = ref.layers[0].self_attn.rot_emb.inv_freq
    for dtype in (torch.float16, torch.bfloat16):
        model = ESM2.from_pretrained(path, dtype=dtype)
        assert model.embed_tokens.weight.dtype == dtype and model.lm_head.weight is model.embed_tokens.weight
        inv = model.layers[1].self_attn.rot_emb.inv_freq
        assert inv.dtype == torch.float32 and torch.equal(inv, stored)
        assert not model.fair_esm_half_rotary  # a standalone ESM-2 keeps fp32 tables (tests/test_fp16_rotary.py)
    assert ESM2.from_pretrained(path, fair_esm_half_rotary=True).fair_esm_half_rotary


def test_fused_qkv_tracks_weight_updates_conversions_and_grad():
    """The fused q/k/v storage follows in-place updates, dtype casts and gives gradients in training."""
    ref = _fair_esm_model(2, 48, 3, seed=13)
    model = ESM2(num_layers=2, embed_dim=48, attention_heads=3).eval()
    tokens = _batch(4)
    with torch.inference_mode():
        model(tokens)  # fuse with the initial weights (the fused storage must not be an inference tensor)
    with torch.no_grad():
        model.load_state_dict(ref.state_dict())  # in-place copies into the fused views
        err = max_rel_err(model(tokens)["logits"], ref(tokens)["logits"])
    assert err < TOL
    model.double()
    ref.double()
    fresh = ESM2(num_layers=2, embed_dim=48, attention_heads=3).double().eval()  # never fused before the cast
    fresh.load_state_dict(ref.state_dict())
    with torch.no_grad():
        out = model(tokens, repr_layers=[2], return_contacts=True)
        exp = fresh(tokens, repr_layers=[2], return_contacts=True)
        peer = ref(tokens, repr_layers=[2], return_contacts=True)
    for key in ("logits", "contacts"):
        assert max_rel_err(out[key], exp[key]) < 1e-12, key
        # fair-esm rounds its attention probabilities to float32 even in a float64 model; ours stay float64.
        assert max_rel_err(out[key], peer[key]) < 1e-6, key
    model.float()
    out = model(tokens)["logits"]  # grad enabled: the differentiable (unfused) projection path
    out.square().mean().backward()
    for proj in ("q_proj", "k_proj", "v_proj"):
        grad = getattr(model.layers[0].self_attn, proj).weight.grad
        assert grad is not None and grad.abs().sum() > 0, proj


def test_inplace_and_fused_residual_paths_agree_and_hidden_states_are_not_aliased():
    """CPU inference adds each residual inside its GEMM, in place; with autograd on, the residual is
    fused into the LayerNorm instead. Both match fair-esm, and the in-place stream never overwrites
    a returned hidden state."""
    layers = 3
    ref = _fair_esm_model(layers, 48, 3, seed=19)
    model = ESM2(num_layers=layers, embed_dim=48, attention_heads=3).eval()
    model.load_state_dict(ref.state_dict())
    tokens = _batch(6)
    with torch.no_grad():
        exp = ref(tokens, repr_layers=range(layers + 1))
        inplace = model(tokens, repr_layers=range(layers + 1))
    fused = model(tokens, repr_layers=range(layers + 1))  # grad enabled: the fused-residual path
    assert fused["logits"].requires_grad
    hidden = inplace["representations"]
    assert len({t.data_ptr() for t in hidden.values()}) == layers + 1
    _assert_close(inplace, exp, layers, "in-place residual")
    _assert_close({k: v.detach() if k == "logits" else {i: t.detach() for i, t in v.items()}
                   for k, v in fused.items()}, exp, layers, "fused residual")


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_other_backends_match_fair_esm(backend):
    from esmfold_fast.backend import set_backend

    ref = _fair_esm_model(1, 48, 3, seed=17)
    model = ESM2(num_layers=1, embed_dim=48, attention_heads=3).eval()
    model.load_state_dict(ref.state_dict())
    model.to(DEVICE)
    set_backend(model, backend)
    tokens = _batch(5)
    with torch.no_grad():
        got = model(tokens.to(DEVICE), repr_layers=[0, 1])
        got = {k: v.cpu() if torch.is_tensor(v) else {i: t.cpu() for i, t in v.items()} for k, v in got.items()}
        _assert_close(got, ref(tokens, repr_layers=[0, 1]), 1, backend)


# ------------------------------------------------------------------------------------------------
# transformers parity
# ------------------------------------------------------------------------------------------------


def _hf_config(layers: int, dim: int, heads: int):
    from transformers import EsmConfig

    return EsmConfig(
        vocab_size=33,
        hidden_size=dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * dim,
        position_embedding_type="rotary",
        token_dropout=True,
        pad_token_id=1,
        mask_token_id=32,
        layer_norm_eps=1e-5,
        emb_layer_norm_before=False,
        vocab_list=Alphabet().all_toks,
    )


def _hf_reference(hf_model, tokens):
    """Our output dict, computed by a transformers EsmForMaskedLM / EsmModel (eager attention)."""
    mask = tokens.ne(1)
    with torch.no_grad():
        res = hf_model(tokens, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        base = hf_model.esm if hasattr(hf_model, "esm") else hf_model
        contacts = base.predict_contacts(tokens, mask)
    hidden = res.hidden_states  # embeddings, then every layer's output (before the final LN)
    layers = len(res.attentions)
    reps = {i: hidden[i] for i in range(layers)}
    base_out = base(tokens, attention_mask=mask)
    reps[layers] = base_out.last_hidden_state
    keep = mask.to(torch.float32)
    pair = (keep[:, :, None] * keep[:, None, :])[:, None, None]
    out = {
        "representations": reps,
        "attentions": torch.stack(res.attentions, 1) * pair,  # fair-esm zeroes padded rows/columns
        "contacts": contacts,
    }
    if hasattr(res, "logits"):
        out["logits"] = res.logits
    return out


@pytest.mark.parametrize("layers,dim,heads", SHAPES)
def test_transformers_masked_lm_parity(tmp_path, layers, dim, heads):
    from transformers import EsmForMaskedLM

    hf = EsmForMaskedLM(_hf_config(layers, dim, heads))
    randomize_(hf, seed=20 + layers)
    hf.save_pretrained(tmp_path)
    hf = EsmForMaskedLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    model = ESM2.from_pretrained(tmp_path)
    assert model.lm_head is not None
    tokens = _batch(layers + 10)
    exp = _hf_reference(hf, tokens)
    assert len(exp["representations"]) == layers + 1
    with torch.no_grad():
        out = model(tokens, repr_layers=range(layers + 1), return_contacts=True)
    _assert_close(out, exp, layers, "transformers")


def test_transformers_esm_model_without_lm_head_and_in_memory_layout(tmp_path):
    from transformers import EsmModel

    hf = EsmModel(_hf_config(2, 48, 3))  # with the pooler, which ESM-2 does not have
    randomize_(hf, seed=31)
    hf.save_pretrained(tmp_path)
    hf = EsmModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    model = ESM2.from_pretrained(tmp_path)
    assert model.lm_head is None
    tokens = _batch(6)
    exp = _hf_reference(hf, tokens)
    with torch.no_grad():
        out = model(tokens, repr_layers=range(3), return_contacts=True)
    assert "logits" not in out
    _assert_close(out, exp, 2, "EsmModel")
    # transformers 5.x's in-memory layout: one model-level rotary_embeddings.inv_freq.
    sd = hf.state_dict()
    assert "rotary_embeddings.inv_freq" in sd
    again = ESM2(ESM2Config(num_layers=2, embed_dim=48, attention_heads=3), lm_head=False)
    load_esm2_state_dict(again, esm2_state_dict_from_transformers(sd), "in-memory")
    with torch.no_grad():
        _assert_close(again(tokens, repr_layers=range(3)), {"representations": exp["representations"]}, 2, "mem")


def test_transformers_old_per_layer_rotary_layout_keeps_stored_values(tmp_path):
    """Old hub checkpoints: per-layer inv_freq (fp16-rounded, here also scaled) and LayerNorm gamma/beta."""
    from transformers import EsmForMaskedLM

    hf = EsmForMaskedLM(_hf_config(2, 48, 3))
    randomize_(hf, seed=41)
    sd = {k: v.clone() for k, v in hf.state_dict().items()}
    inv = (sd.pop("esm.rotary_embeddings.inv_freq") * 1.1).half().float()
    del sd["lm_head.decoder.weight"]
    for i in range(2):
        sd[f"esm.encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq"] = inv.clone()
        for ln in (f"esm.encoder.layer.{i}.LayerNorm", f"esm.encoder.layer.{i}.attention.LayerNorm"):
            sd[ln + ".gamma"] = sd.pop(ln + ".weight")
            sd[ln + ".beta"] = sd.pop(ln + ".bias")
    save_file(sd, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    hf.config.save_pretrained(tmp_path)
    hf = EsmForMaskedLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert torch.equal(hf.esm.rotary_embeddings.inv_freq, inv)
    model = ESM2.from_pretrained(tmp_path)
    for layer in model.layers:
        assert torch.equal(layer.self_attn.rot_emb.inv_freq, inv)
    tokens = _batch(8)
    with torch.no_grad():
        out = model(tokens, repr_layers=range(3), return_contacts=True)
    _assert_close(out, _hf_reference(hf, tokens), 2, "old layout")


def test_folding_state_dict_prefix_without_lm_head():
    """ESMFold's state dict: the LM under ``esm.``, its own plain-Linear ``lm_head`` at the root."""
    from transformers import EsmModel

    config = _hf_config(2, 48, 3)
    config._attn_implementation = "eager"  # attention maps for the contact reference
    hf = EsmModel(config, add_pooling_layer=False)
    randomize_(hf, seed=51)
    hf.eval()
    folding = {"esm." + k: v for k, v in hf.state_dict().items()}
    folding["lm_head.weight"] = torch.randn(23, 64)
    folding["lm_head.bias"] = torch.randn(23)
    folding["trunk.blocks.0.layernorm_1.weight"] = torch.randn(64)
    sd = esm2_state_dict_from_transformers(folding, prefix="esm.")
    assert not any(k.startswith(("lm_head", "trunk")) for k in sd)
    model = ESM2(ESM2Config(num_layers=2, embed_dim=48, attention_heads=3), lm_head=False).eval()
    load_esm2_state_dict(model, sd, "esmfold.bin")
    tokens = _batch(9)
    exp = _hf_reference(hf, tokens)
    with torch.no_grad():
        out = model(tokens, repr_layers=range(3), return_contacts=True)
    _assert_close(out, exp, 2, "folding prefix")


# ------------------------------------------------------------------------------------------------
# caches and error paths
# ------------------------------------------------------------------------------------------------


def test_missing_caches_say_which_file_goes_where(tmp_path, monkeypatch, hf_cache):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(CheckpointError) as err:
        ESM2.from_pretrained("facebook/esm2_t6_8M_UR50D")
    msg = str(err.value)
    assert str(tmp_path / "hf" / "models--facebook--esm2_t6_8M_UR50D" / "snapshots") in msg
    assert "config.json" in msg and "model.safetensors or" in msg and "pytorch_model.bin" in msg
    with pytest.raises(CheckpointError) as err:
        ESM2.from_pretrained("esm2_t6_8M_UR50D")
    msg = str(err.value)
    assert "esm2_t6_8M_UR50D.pt" in msg and str(tmp_path / "torch" / "hub" / "checkpoints") in msg
    assert "esm2_t6_8M_UR50D-contact-regression.pt" in msg


def test_names_resolve_from_local_caches(tmp_path, monkeypatch, hf_cache):
    from transformers import EsmForMaskedLM

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # Hugging Face layout: refs/main names the snapshot; an older, incomplete snapshot is skipped.
    repo = tmp_path / "hf" / "models--facebook--esm2_t2_tiny"
    snap = repo / "snapshots" / "0123abc"
    hf = EsmForMaskedLM(_hf_config(2, 48, 3))
    randomize_(hf, seed=61)
    hf.save_pretrained(snap)
    (repo / "snapshots" / "old").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")  # as huggingface_hub writes it
    assert resolve_hf_snapshot("facebook/esm2_t2_tiny", ("config.json",)) == snap
    model = ESM2.from_pretrained("facebook/esm2_t2_tiny")
    tokens = _batch(12)
    hf = EsmForMaskedLM.from_pretrained(snap, attn_implementation="eager").eval()
    with torch.no_grad():
        assert max_rel_err(model(tokens)["logits"], hf(tokens, attention_mask=tokens.ne(1)).logits) < TOL
    # torch hub layout: <TORCH_HOME>/hub/checkpoints/<name>.pt beside its contact regression.
    ckpt = tmp_path / "torch" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    ref = _fair_esm_model(2, 48, 3, seed=62)
    _fp16_roundtrip(ref)
    _write_fair_esm(ref, ckpt, "esm2_t2_tinyhub")
    assert resolve_torch_hub_checkpoint("esm2_t2_tinyhub") == ckpt / "esm2_t2_tinyhub.pt"
    model = ESM2.from_pretrained("esm2_t2_tinyhub")
    with torch.no_grad():
        out = model(tokens, return_contacts=True)
        exp = ref(tokens, return_contacts=True)
    assert max_rel_err(out["contacts"], exp["contacts"]) < TOL


def test_mismatched_keys_name_file_and_keys(tmp_path):
    ref = _fair_esm_model(2, 48, 3, seed=71)
    sd = ref.state_dict()
    raw = {"encoder.sentence_encoder." + k: v for k, v in sd.items() if not k.startswith(("lm_head", "contact"))}
    raw.update({"encoder." + k: v for k, v in sd.items() if k.startswith("lm_head")})
    del raw["encoder.sentence_encoder.layers.1.fc2.weight"]
    raw["encoder.sentence_encoder.layers.1.fc3.weight"] = torch.zeros(1)
    cfg = argparse.Namespace(encoder_layers=2, encoder_embed_dim=48, encoder_attention_heads=3, token_dropout=True)
    path = tmp_path / "esm2_bad.pt"
    torch.save({"cfg": {"model": cfg}, "model": raw}, path)
    with pytest.raises(CheckpointError) as err:
        ESM2.from_pretrained(path)
    msg = str(err.value)
    assert str(path) in msg and "layers.1.fc2.weight" in msg and "layers.1.fc3.weight" in msg
    # Weights of another width than the config's: the error names the key and both shapes.
    cfg.encoder_embed_dim = 60
    cfg.encoder_attention_heads = 5
    raw = {"encoder.sentence_encoder." + k: v for k, v in sd.items() if not k.startswith(("lm_head", "contact"))}
    torch.save({"cfg": {"model": cfg}, "model": raw}, path)
    with pytest.raises(CheckpointError, match="embed_tokens.weight has shape"):
        ESM2.from_pretrained(path)


def test_transformers_dir_key_mismatch_names_directory(tmp_path):
    from transformers import EsmForMaskedLM

    hf = EsmForMaskedLM(_hf_config(2, 48, 3))
    hf.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    sd = load_file(str(tmp_path / "model.safetensors"))
    sd["esm.encoder.layer.0.attention.self.extra.weight"] = torch.zeros(2)
    del sd["esm.encoder.emb_layer_norm_after.bias"]
    save_file(sd, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as err:
        ESM2.from_pretrained(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "emb_layer_norm_after.bias" in msg
    assert "esm.encoder.layer.0.attention.self.extra.weight" in msg


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    ref = _fair_esm_model(2, 48, 3, seed=81)
    path = _write_fair_esm(ref, tmp_path, "esm2_t2_trunc")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="esm2_t2_trunc.pt"):
        ESM2.from_pretrained(path)
    # The same for a truncated safetensors file in a transformers directory.
    from transformers import EsmForMaskedLM

    hf_dir = tmp_path / "hf"
    EsmForMaskedLM(_hf_config(2, 48, 3)).save_pretrained(hf_dir)
    st = hf_dir / "model.safetensors"
    st.write_bytes(st.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        ESM2.from_pretrained(hf_dir)


def test_config_and_constructor_forms_agree():
    cfg = ESM2Config.named("esm2_t6_8M_UR50D")
    a = ESM2(cfg, lm_head=False, contact_head=False)
    b = ESM2(num_layers=6, embed_dim=320, attention_heads=20, alphabet=esm.data.Alphabet.from_architecture("ESM-1b"))
    assert a.layers[0].self_attn.head_dim == 16 and a.lm_head is None and a.contact_head is None
    own = set(b.state_dict())
    ref = set(esm.model.esm2.ESM2(num_layers=6, embed_dim=320, attention_heads=20).state_dict())
    assert own == ref
    assert set(a.state_dict()) == {k for k in ref if not k.startswith(("lm_head", "contact_head"))}
    with pytest.raises(RuntimeError, match="without a contact head"):
        a(_batch(0), return_contacts=True)
    with pytest.raises(ValueError, match="divisible"):
        ESM2(num_layers=1, embed_dim=50, attention_heads=3)
