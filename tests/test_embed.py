"""``esmfold_fast.embed``: fair-esm ``scripts/extract.py`` parity, transformers parity, batching, file formats.

The peer models are tiny and randomised in full (contact regression included), written in the
official on-disk layout and loaded through ``ESM2.from_pretrained``; extract.py's per-batch procedure
is re-run verbatim on fair-esm's model. Values must agree within 1e-5 relative error (fp32), as in
tests/test_esm2.py.
"""

from __future__ import annotations

import io
import random

import esm
import numpy as np
import pytest
import torch
from _util import max_rel_err, randomize_
from test_esm2 import _write_fair_esm

from esmfold_fast.alphabet import Alphabet
from esmfold_fast.embed import (
    INCLUDE_CHOICES,
    EmbedOptions,
    embed_batch,
    embedding_bytes,
    embedding_npz_bytes,
    record_problem,
    tokens_for,
)
from esmfold_fast.esm2 import ESM2
from esmfold_fast.fasta import FastaRecord

TOL = 1e-5
AA = "LAGVSERTIDPKQNFYMHWC"
LAYERS, DIM, HEADS = 3, 48, 3
REPR_KEYS = ("representations", "mean_representations", "bos_representations")


def _seq(n: int, seed: int, extra: str = "") -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(AA + extra) for _ in range(n))


def _records() -> list[FastaRecord]:
    """Odd lengths 17 and 37 (and 5) in one padded batch; rare letters X/B/U/Z/O in one record."""
    seqs = [_seq(17, 1), _seq(37, 2, extra="XBUZO"), _seq(5, 3)]
    return [FastaRecord(f"rec{i}", f"rec{i} some description", s, i + 1) for i, s in enumerate(seqs)]


# ------------------------------------------------------------------------------------------------
# fixtures: a random fair-esm ESM-2 in the raw .pt layout, loaded by ESM2.from_pretrained
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(fair-esm reference, ours, fair-esm alphabet, checkpoint directory)."""
    ref = esm.model.esm2.ESM2(num_layers=LAYERS, embed_dim=DIM, attention_heads=HEADS, alphabet="ESM-1b")
    randomize_(ref, seed=42)
    with torch.no_grad():
        for p in ref.parameters():  # the checkpoint stores fp16: compare against the rounded weights
            p.copy_(p.half().float())
        for layer in ref.layers:  # fair-esm checkpoints hold fp16-rounded rotary frequencies
            inv = layer.self_attn.rot_emb.inv_freq
            inv.copy_(inv.half().float())
    assert ref.contact_head.regression.weight.abs().min() > 0 and ref.contact_head.regression.bias.abs().min() > 0
    ref.eval()
    directory = tmp_path_factory.mktemp("ckpt")
    ours = ESM2.from_pretrained(_write_fair_esm(ref, directory, "esm2_t3_embedtest"))
    return ref, ours, esm.data.Alphabet.from_architecture("ESM-1b"), directory


# ------------------------------------------------------------------------------------------------
# extract.py, verbatim (fair-esm scripts/extract.py, the body of its batch loop)
# ------------------------------------------------------------------------------------------------


def _extract_py(model, alphabet, data, repr_layers, include, truncation_seq_length=1022):
    batch_converter = alphabet.get_batch_converter(truncation_seq_length)
    labels, strs, toks = batch_converter(data)
    assert all(-(model.num_layers + 1) <= i <= model.num_layers for i in repr_layers)
    repr_layers = [(i + model.num_layers + 1) % (model.num_layers + 1) for i in repr_layers]
    return_contacts = "contacts" in include
    with torch.no_grad():
        out = model(toks, repr_layers=repr_layers, return_contacts=return_contacts)
    logits = out["logits"].to(device="cpu")
    representations = {layer: t.to(device="cpu") for layer, t in out["representations"].items()}
    if return_contacts:
        contacts = out["contacts"].to(device="cpu")
    results = []
    for i, label in enumerate(labels):
        result = {"label": label}
        truncate_len = min(truncation_seq_length, len(strs[i]))
        if "per_tok" in include:
            result["representations"] = {
                layer: t[i, 1 : truncate_len + 1].clone() for layer, t in representations.items()
            }
        if "mean" in include:
            result["mean_representations"] = {
                layer: t[i, 1 : truncate_len + 1].mean(0).clone() for layer, t in representations.items()
            }
        if "bos" in include:
            result["bos_representations"] = {layer: t[i, 0].clone() for layer, t in representations.items()}
        if return_contacts:
            result["contacts"] = contacts[i, :truncate_len, :truncate_len].clone()
        # Not in extract.py: the LM logits at the residue positions, sliced as per_tok.
        if "logits" in include:
            result["logits"] = logits[i, 1 : truncate_len + 1].clone()
        results.append(result)
    return results


def _assert_results_close(ours: dict, ref: dict, what: str, tol: float = TOL) -> None:
    """Same keys (layer keys included) and values within ``tol`` relative error."""
    assert ours.keys() == ref.keys(), f"{what}: keys {sorted(ours)} != {sorted(ref)}"
    assert ours["label"] == ref["label"]
    for key in REPR_KEYS:
        if key in ref:
            assert list(ours[key]) == list(ref[key]), f"{what}: {key} layers {list(ours[key])} != {list(ref[key])}"
            for layer in ref[key]:
                a, b = ours[key][layer], ref[key][layer]
                assert a.shape == b.shape, f"{what}: {key}[{layer}] shape {tuple(a.shape)} != {tuple(b.shape)}"
                err = max_rel_err(a, b)
                assert err < tol, f"{what}: {key}[{layer}] rel err {err:.2e}"
    for key in ("contacts", "logits"):
        if key in ref:
            assert ours[key].shape == ref[key].shape, f"{what}: {key} shape"
            err = max_rel_err(ours[key], ref[key])
            assert err < tol, f"{what}: {key} rel err {err:.2e}"


def _assert_own_fp32_cpu(result: dict) -> None:
    tensors = [t for k in REPR_KEYS for t in result.get(k, {}).values()]
    tensors += [result[k] for k in ("contacts", "logits") if k in result]
    assert tensors
    for t in tensors:
        assert t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous()
        assert not t.requires_grad and not t.is_inference()
        # Storage of its own: torch.save writes this record's values, not the whole batch.
        assert t.untyped_storage().nbytes() == t.numel() * 4 and t.storage_offset() == 0


# ------------------------------------------------------------------------------------------------
# parity
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "repr_layers,truncation",
    [((0, 1, -1, -2), 30), ((-4, 2, 3, -1), 1022)],  # -1 and 3 name the same layer; 30 cuts the 37-mer only
)
def test_extract_py_parity_every_include(models, repr_layers, truncation):
    ref, ours, alphabet, _ = models
    records = _records()
    options = EmbedOptions(repr_layers=repr_layers, include=INCLUDE_CHOICES, truncation_seq_length=truncation)
    got = embed_batch(ours, records, options)
    exp = _extract_py(ref, alphabet, [(r.id, r.sequence) for r in records], list(repr_layers), INCLUDE_CHOICES, truncation)
    assert len(got) == len(exp) == 3
    expected_layers = sorted({(i + LAYERS + 1) % (LAYERS + 1) for i in repr_layers})
    for g, e, r in zip(got, exp, records):
        n = min(truncation, len(r.sequence))
        assert list(g["representations"]) == expected_layers
        assert g["representations"][LAYERS].shape == (n, DIM) and g["mean_representations"][0].shape == (DIM,)
        assert g["bos_representations"][expected_layers[0]].shape == (DIM,)
        assert g["contacts"].shape == (n, n) and g["logits"].shape == (n, 33)
        _assert_own_fp32_cpu(g)
        # The file as written and read back, not just the in-memory dict.
        loaded = torch.load(io.BytesIO(embedding_bytes(g)), weights_only=True)
        _assert_results_close(loaded, e, f"{r.id} truncation {truncation}")
    if truncation == 30:
        assert got[1]["contacts"].shape == (30, 30) and got[0]["contacts"].shape == (17, 17)


def test_comparison_catches_a_wrong_layer_or_position(models):
    """The parity check above is discriminating: neighbouring layers, or an off-by-one slice, fail it."""
    ref, ours, alphabet, _ = models
    records = _records()[:2]
    exp = _extract_py(ref, alphabet, [(r.id, r.sequence) for r in records], [1, 2], ("per_tok", "mean", "bos"))
    for e in exp:
        for key in REPR_KEYS:
            assert max_rel_err(e[key][1], e[key][2]) > 100 * TOL
    got = embed_batch(ours, records, EmbedOptions(repr_layers=[1], include=["per_tok"]))
    full = ours(Alphabet().get_batch_converter()([(r.id, r.sequence) for r in records])[2], repr_layers=[1])
    shifted = full["representations"][1][0, 0:17]  # cls included, last residue dropped
    assert max_rel_err(got[0]["representations"][1], shifted) > 100 * TOL
    with pytest.raises(AssertionError, match="layers"):
        wrong = dict(got[0], representations={2: got[0]["representations"][1]})
        _assert_results_close(wrong, {"label": "rec0", "representations": exp[0]["representations"]}, "x")


def test_transformers_esm_model_hidden_states_parity(tmp_path):
    from transformers import EsmConfig, EsmModel

    config = EsmConfig(
        vocab_size=33, hidden_size=DIM, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=4 * DIM, position_embedding_type="rotary", token_dropout=True, pad_token_id=1,
        mask_token_id=32, layer_norm_eps=1e-5, emb_layer_norm_before=False, vocab_list=Alphabet().all_toks,
    )
    hf = EsmModel(config, add_pooling_layer=False)
    randomize_(hf, seed=7)
    hf.save_pretrained(tmp_path)
    hf = EsmModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ours = ESM2.from_pretrained(tmp_path)
    records = _records()
    options = EmbedOptions(repr_layers=range(-LAYERS - 1, 0), include=["per_tok", "mean", "bos"], truncation_seq_length=25)
    got = embed_batch(ours, records, options)
    tokens = Alphabet().get_batch_converter(25)([(r.id, r.sequence) for r in records])[2]
    mask = tokens.ne(1)
    with torch.no_grad():
        res = hf(tokens, attention_mask=mask, output_hidden_states=True)
    # hidden_states: the embeddings, then each layer's output (the last before emb_layer_norm_after).
    hidden = {i: res.hidden_states[i] for i in range(LAYERS)}
    hidden[LAYERS] = res.last_hidden_state
    for i, (g, r) in enumerate(zip(got, records)):
        n = min(25, len(r.sequence))
        assert list(g["representations"]) == list(range(LAYERS + 1))
        for layer, h in hidden.items():
            for key, want in (
                ("representations", h[i, 1 : n + 1]),
                ("mean_representations", h[i, 1 : n + 1].mean(0)),
                ("bos_representations", h[i, 0]),
            ):
                err = max_rel_err(g[key][layer], want)
                assert err < TOL, f"{r.id}: {key}[{layer}] rel err {err:.2e} against transformers"


def test_batched_equals_single(models):
    """Padding changes nothing: every record in a padded batch gets the values it gets alone."""
    _, ours, _, _ = models
    records = _records()
    options = EmbedOptions(repr_layers=[0, 2, -1], include=INCLUDE_CHOICES, truncation_seq_length=40)
    batched = embed_batch(ours, records, options)
    reversed_ = embed_batch(ours, records[::-1], options)[::-1]
    for record, b, rv in zip(records, batched, reversed_):
        (alone,) = embed_batch(ours, [record], options)
        _assert_results_close(b, alone, f"{record.id} batched vs alone")
        _assert_results_close(rv, alone, f"{record.id} reversed batch vs alone")


def test_default_options_give_last_layer_mean_only(models):
    _, ours, _, _ = models
    options = EmbedOptions()
    assert options.include == ("mean",) and options.repr_layers == (-1,) and options.truncation_seq_length == 1022
    (result,) = embed_batch(ours, _records()[:1])
    assert set(result) == {"label", "mean_representations"} and list(result["mean_representations"]) == [LAYERS]
    (only_contacts,) = embed_batch(ours, _records()[:1], EmbedOptions(include="contacts", repr_layers=[]))
    assert set(only_contacts) == {"label", "contacts"}


def test_half_precision_model_gives_float32(models):
    _, ours, _, directory = models
    half = ESM2.from_pretrained(directory / "esm2_t3_embedtest.pt", dtype=torch.bfloat16)
    options = EmbedOptions(repr_layers=[-1], include=INCLUDE_CHOICES)
    got = embed_batch(half, _records(), options)
    exp = embed_batch(ours, _records(), options)
    for g, e in zip(got, exp):
        _assert_own_fp32_cpu(g)
        _assert_results_close(g, e, "bf16 vs fp32", tol=0.03)  # measured: at most 1.2e-2 (logits)


def test_lower_case_is_read_as_upper_case(models):
    _, ours, _, _ = models
    rec = _records()[0]
    lower = FastaRecord(rec.id, rec.header, rec.sequence.lower(), rec.index)
    options = EmbedOptions(include=["per_tok"])
    (a,), (b,) = embed_batch(ours, [rec], options), embed_batch(ours, [lower], options)
    assert torch.equal(a["representations"][LAYERS], b["representations"][LAYERS])


# ------------------------------------------------------------------------------------------------
# file formats
# ------------------------------------------------------------------------------------------------


def test_embedding_bytes_weights_only_round_trip(models, tmp_path):
    _, ours, _, _ = models
    (result,) = embed_batch(ours, _records()[1:2], EmbedOptions(repr_layers=[0, -1], include=INCLUDE_CHOICES))
    path = tmp_path / f"{result['label']}.pt"
    data = embedding_bytes(result)
    path.write_bytes(data)
    loaded = torch.load(path, weights_only=True)
    assert loaded.keys() == result.keys() and loaded["label"] == "rec1"
    for key in REPR_KEYS:
        assert list(loaded[key]) == [0, LAYERS]
        for layer, t in result[key].items():
            assert torch.equal(loaded[key][layer], t)
    assert torch.equal(loaded["contacts"], result["contacts"]) and torch.equal(loaded["logits"], result["logits"])
    # Only this record's values are in the file (no batch-sized storages): 37x48 x2 + 48 x4 + 37x37 + 37x33 floats.
    floats = 2 * 37 * DIM + 4 * DIM + 37 * 37 + 37 * 33
    assert floats * 4 < len(data) < floats * 4 + 8192


def test_embedding_npz_round_trip(models):
    _, ours, _, _ = models
    (result,) = embed_batch(ours, _records()[:1], EmbedOptions(repr_layers=[1, -1], include=INCLUDE_CHOICES))
    with np.load(io.BytesIO(embedding_npz_bytes(result)), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    expected = {"label", "contacts", "logits"} | {f"{k}_{layer}" for k in REPR_KEYS for layer in (1, LAYERS)}
    assert set(arrays) == expected
    assert str(arrays["label"]) == "rec0" and arrays["label"].shape == ()
    for key in REPR_KEYS:
        for layer, t in result[key].items():
            a = arrays[f"{key}_{layer}"]
            assert a.dtype == np.float32 and np.array_equal(a, t.numpy())
    assert np.array_equal(arrays["contacts"], result["contacts"].numpy()) and arrays["logits"].shape == (17, 33)
    (mean_only,) = embed_batch(ours, _records()[:1])
    with np.load(io.BytesIO(embedding_npz_bytes(mean_only)), allow_pickle=False) as npz:
        assert sorted(npz.files) == ["label", f"mean_representations_{LAYERS}"]


# ------------------------------------------------------------------------------------------------
# options, records, errors
# ------------------------------------------------------------------------------------------------


def test_tokens_for_charges_truncated_length_plus_two():
    rec = FastaRecord("a", "a", "M" * 50, 1)
    assert tokens_for(rec, EmbedOptions()) == 52
    assert tokens_for(rec, EmbedOptions(truncation_seq_length=20)) == 22
    assert tokens_for(rec, EmbedOptions(truncation_seq_length=None)) == 52
    assert tokens_for(FastaRecord("b", "b", "M" * 2000, 2), EmbedOptions()) == 1024


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(include=["mean", "pertok"]), r"unknown include 'pertok'; choose from mean, per_tok, bos, contacts, logits"),
        (dict(include=[]), "include is empty"),
        (dict(repr_layers=[1.0]), "repr_layers must be integers"),
        (dict(repr_layers=[True]), "repr_layers must be integers"),
        (dict(repr_layers=[]), "repr_layers is empty"),
        (dict(truncation_seq_length=0), "truncation_seq_length must be a positive integer"),
    ],
)
def test_option_errors_are_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        EmbedOptions(**kwargs)
    assert "\n" not in str(err.value)


def test_layer_out_of_range_names_the_layer_count(models):
    _, ours, _, _ = models
    options = EmbedOptions(repr_layers=[LAYERS + 1])
    assert options.layers_for(10) == (4,)  # options alone do not know the model
    for bad in (LAYERS + 1, -(LAYERS + 2)):
        with pytest.raises(ValueError, match=rf"repr layer {bad} is out of range for a 3-layer model \(valid: -4 \.\. 3\)"):
            embed_batch(ours, _records(), EmbedOptions(repr_layers=[0, bad]))
    assert EmbedOptions(repr_layers=[-4, 3]).layers_for(LAYERS) == (0, 3)


def test_bad_records_are_rejected_naming_the_record(models):
    _, ours, _, _ = models
    good = _records()[0]
    cases = {
        "AAAK:GGSL": "rec9.*2 chains.*single chains",
        "": "rec9.*empty sequence",
        "MKJT": "rec9.*'J' are not in the ESM-2 alphabet \\(first at position 3\\)",
        "MK<mask>T": "rec9.*not in the ESM-2 alphabet",
    }
    for seq, match in cases.items():
        bad = FastaRecord("rec9", "rec9", seq, 9)
        assert record_problem(bad) is not None and "\n" not in record_problem(bad)
        with pytest.raises(ValueError, match=match):
            embed_batch(ours, [good, bad], EmbedOptions())
    assert record_problem(good) is None
    assert embed_batch(ours, [], EmbedOptions()) == []


def test_contacts_and_logits_need_their_heads(models, tmp_path):
    ref, _, _, _ = models
    no_reg = ESM2.from_pretrained(_write_fair_esm(ref, tmp_path, "esm2_t3_noreg", regression=False))
    with pytest.raises(ValueError, match="include 'contacts': .*esm2_t3_noreg-contact-regression.pt"):
        embed_batch(no_reg, _records(), EmbedOptions(include=["mean", "contacts"]))
    no_lm = ESM2(num_layers=1, embed_dim=16, attention_heads=2, lm_head=False).eval()
    with pytest.raises(ValueError, match="include 'logits': this ESM-2 has no LM head"):
        embed_batch(no_lm, _records(), EmbedOptions(include=["logits"]))
    assert set(embed_batch(no_lm, _records()[:1], EmbedOptions(include=["mean", "contacts"]))[0]) == {
        "label", "mean_representations", "contacts"
    }


# ------------------------------------------------------------------------------------------------
# the command line: esmfold-fast embed
# ------------------------------------------------------------------------------------------------


def test_embed_cli_writes_extract_py_files_batches_and_resumes(models, tmp_path, capsys, monkeypatch):
    from esmfold_fast import embed as embed_module
    from esmfold_fast.cli import main

    ref, _ours, alphabet, directory = models
    records = _records()
    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">{r.header}\n{r.sequence}\n" for r in records) + ">cplx\nACD:EFG\n>bad\nAC1\n")
    batches = []
    real = embed_module.embed_batch

    def spy(model, batch, options=None):
        batches.append([r.id for r in batch])
        return real(model, batch, options)

    monkeypatch.setattr(embed_module, "embed_batch", spy)
    out = tmp_path / "out"
    argv = ["embed", str(fasta), "-o", str(out), "--model", str(directory / "esm2_t3_embedtest.pt"),
            "--repr-layers", "-1", "0", "--include", "mean", "per_tok", "bos", "contacts",
            "--truncation-seq-length", "30", "--toks-per-batch", "80", "--npz"]
    assert main(argv) == 1  # the complex and the bad record fail; the others are embedded
    err = capsys.readouterr().err
    assert f"{fasta}: record 4 'cplx': 2 chains" in err and f"{fasta}: record 5 'bad'" in err
    assert batches == [["rec2", "rec0"], ["rec1"]]  # tokens 7, 19, 32 (truncated 30 + 2): 2 x 19 <= 80 < 3 x 32
    data = [(r.id, r.sequence) for r in records]
    expected = _extract_py(ref, alphabet, data, [-1, 0], {"mean", "per_tok", "bos", "contacts"}, 30)
    for record, ref_result in zip(records, expected):
        ours = torch.load(out / f"{record.id}.pt", weights_only=True)
        _assert_results_close(ours, ref_result, record.id)
        arrays = np.load(out / f"{record.id}.npz", allow_pickle=False)
        np.testing.assert_array_equal(arrays["mean_representations_3"], ours["mean_representations"][3].numpy())
    summary = (out / "summary.tsv").read_text().splitlines()
    assert summary[0].split("\t") == ["id", "length", "seconds", "status", "error"]
    assert [ln.split("\t")[3] for ln in summary[1:]] == ["embedded"] * 3 + ["failed"] * 2

    batches.clear()
    assert main(argv) == 1
    assert batches == []  # everything complete is skipped
    assert "3 records already complete" in capsys.readouterr().err


def test_embed_cli_option_errors(models, tmp_path, capsys):
    from esmfold_fast.cli import main

    _ref, _ours, _alphabet, directory = models
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nACDE\n")
    model = str(directory / "esm2_t3_embedtest.pt")
    assert main(["embed", str(fasta), "-o", str(tmp_path / "o"), "--model", model, "--repr-layers", "9"]) == 2
    err = capsys.readouterr().err
    assert "repr layer 9 is out of range for a 3-layer model" in err and model in err
    assert main(["embed", str(fasta), "-o", str(tmp_path / "o"), "--model", model, "--include", "xyz"]) == 2
    assert "invalid choice" in capsys.readouterr().err
