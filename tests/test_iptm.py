"""Chain-aware confidence: ipTM, pTM without the linker, per-chain pTM and pLDDT.

Checked against a naive float64 loop written from the AlphaFold-Multimer / OpenFold definition
(``compute_tm(logits, residue_weights, asym_id, interface)``: pair mask, residue weights, d0 from the
weighted residue count, best anchor), on random logits with odd chain lengths, a linker and padding,
and end to end through a tiny random ESMFold.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers.models.esm.openfold_utils import compute_tm as hf_compute_tm

from esmfold_fast import ESMFold
from esmfold_fast.heads import chain_scores, chain_tm_scores, ptm_per_sequence

BINS, MAX_BIN, EPS = 64, 31, 1e-8
# The heads build the bin centres and TM terms in float32 as OpenFold does (so float64 models keep the
# peers' pTM exactly); the naive loop is float64 throughout: they agree to float32 rounding.
TOL = 1e-7


def naive_tm(logits, weights, asym=None, interface=False) -> float:
    """OpenFold's ``compute_tm`` as loops in float64: for anchor i, the pair-masked weighted mean of
    E[1 / (1 + (e_ij / d0)^2)] over j; the best anchor (by per_i * w_i) wins."""
    probs = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), -1).numpy()
    weights = np.asarray(weights, dtype=np.float64)
    length = probs.shape[0]
    step = MAX_BIN / (BINS - 2)
    centers = np.array([k * step + step / 2 for k in range(BINS - 1)] + [(BINS - 2) * step + 1.5 * step])
    n = max(weights.sum(), 19)
    d0 = 1.24 * (n - 15) ** (1 / 3) - 1.8
    f = 1 / (1 + centers**2 / d0**2)
    best, best_weighted = 0.0, -math.inf
    for i in range(length):  # each anchor in turn; its row of pairs as float64 vectors
        m = np.ones(length) if not interface else (np.asarray(asym) != asym[i]).astype(np.float64)
        w = m * weights[i] * weights  # [L]
        per_i = float((w * (probs[i] @ f)).sum()) / (EPS + float(w.sum()))
        if per_i * weights[i] > best_weighted:
            best, best_weighted = per_i, per_i * weights[i]
    return best


def layout(chain_lengths, linker=5, pad=3):
    """chain index [L] with -1 at the linkers and padding, and the asym id of every position."""
    chain = []
    for c, n in enumerate(chain_lengths):
        chain += [c] * n
        if c < len(chain_lengths) - 1:
            chain += [-1] * linker
    chain += [-1] * pad
    return torch.tensor(chain)


def naive_scores(logits, chain) -> dict:
    real = (chain >= 0).double().numpy()
    asym = chain.numpy()
    n_chains = int(chain.max()) + 1
    out = {
        "ptm_no_linker": naive_tm(logits, real),
        "chain_ptm": [naive_tm(logits, (chain == c).double().numpy()) for c in range(n_chains)],
    }
    out["iptm"] = naive_tm(logits, real, asym, interface=True) if n_chains > 1 else float("nan")
    return out


@pytest.mark.parametrize("chain_lengths", [(17, 9), (13, 21, 7), (5, 1, 11)])
@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_chain_tm_scores_match_naive_definition(chain_lengths, scale):
    gen = torch.Generator().manual_seed(sum(chain_lengths) + int(scale))
    chain = layout(chain_lengths)
    logits = scale * torch.randn(len(chain), len(chain), BINS, generator=gen, dtype=torch.float64)
    got = chain_tm_scores(torch.softmax(logits, -1), chain)
    want = naive_scores(logits, chain)
    assert float(got["iptm"]) == pytest.approx(want["iptm"], abs=TOL)
    assert float(got["ptm_no_linker"]) == pytest.approx(want["ptm_no_linker"], abs=TOL)
    np.testing.assert_allclose(got["chain_ptm"].numpy(), want["chain_ptm"], atol=TOL)
    # The peer's compute_tm (d0 from its input's length) on the real residues' sub-block agrees too.
    real = torch.nonzero(chain >= 0).flatten()
    peer = hf_compute_tm(logits[real][:, real], max_bin=MAX_BIN, no_bins=BINS)
    assert float(got["ptm_no_linker"]) == pytest.approx(float(peer), abs=TOL)
    # float32 probabilities (the model's heads) agree to float32 precision.
    got32 = chain_tm_scores(torch.softmax(logits.float(), -1), chain)
    assert float(got32["iptm"]) == pytest.approx(want["iptm"], abs=1e-5)


def test_monomer_has_no_iptm_and_ptm_no_linker_is_ptm():
    gen = torch.Generator().manual_seed(1)
    chain = layout([23], pad=4)
    logits = torch.randn(1, len(chain), len(chain), BINS, generator=gen, dtype=torch.float64)
    probs = torch.softmax(logits, -1)
    got = chain_scores(probs, chain[None])
    assert torch.isnan(got["iptm"]).all()
    mask = (chain >= 0)[None]
    ptm = ptm_per_sequence(logits, mask, probs=probs)
    torch.testing.assert_close(got["ptm_no_linker"], ptm, rtol=0, atol=1e-12)
    torch.testing.assert_close(got["chain_ptm"], ptm[:, None], rtol=0, atol=1e-12)
    assert float(ptm[0]) == pytest.approx(naive_tm(logits[0], mask[0].double().numpy()), abs=TOL)


def test_batched_items_are_scored_per_layout():
    """Items of one batch with different chain layouts each get their own scores, NaN-padded."""
    gen = torch.Generator().manual_seed(2)
    layouts = [layout((9, 15, 3), pad=0), layout((19,), pad=0), layout((7, 11), pad=0)]
    length = max(len(c) for c in layouts)
    chain = torch.full((3, length), -1)
    for k, c in enumerate(layouts):
        chain[k, : len(c)] = c
    logits = torch.randn(3, length, length, BINS, generator=gen, dtype=torch.float64)
    plddt = 100 * torch.rand(3, length, 37, generator=gen, dtype=torch.float64)
    exists = (torch.rand(3, length, 37, generator=gen) < 0.3).double()
    exists[2, 20:] = 0  # chain 1 of item 2 (positions 12-22) keeps a few atoms
    got = chain_scores(torch.softmax(logits, -1), chain, plddt, exists)
    assert got["chain_ptm"].shape == got["chain_plddt"].shape == (3, 3)
    for k in range(3):
        want = naive_scores(logits[k], chain[k])
        if math.isnan(want["iptm"]):
            assert math.isnan(float(got["iptm"][k]))
        else:
            assert float(got["iptm"][k]) == pytest.approx(want["iptm"], abs=TOL)
        n_chains = len(want["chain_ptm"])
        np.testing.assert_allclose(got["chain_ptm"][k, :n_chains].numpy(), want["chain_ptm"], atol=TOL)
        assert torch.isnan(got["chain_ptm"][k, n_chains:]).all()
        for c in range(n_chains):
            sel = (chain[k] == c)[:, None] & (exists[k] > 0)
            assert float(got["chain_plddt"][k, c]) == pytest.approx(float(plddt[k][sel].mean()), abs=TOL)


@pytest.fixture(scope="module")
def tiny():
    return ESMFold.from_config("tiny", backend="torch", dtype=torch.float64, seed=3)


def test_infer_reports_chain_scores(tiny):
    """End to end: ipTM and friends from the model's own pTM logits over the real residues (the linker
    left out), per item; ``ptm`` stays the reference's (over every residue, linker included)."""
    seqs = ["MKTAYIAKQRQISFV:GWKHCDE:LLPAR", "ACDEFGHIKLMNPQR"]
    out = tiny.infer(seqs, num_recycles=0, chain_linker="G" * 7)
    mask = out["atom37_atom_exists"].any(-1)  # real residues with atoms (no X here)
    for k in range(2):
        chain = out["chain_index"][k].masked_fill(~mask[k], -1)
        want = naive_scores(out["ptm_logits"][k], chain)
        if k == 0:
            assert float(out["iptm"][k]) == pytest.approx(want["iptm"], abs=TOL)
        else:
            assert math.isnan(float(out["iptm"][k]))
        assert float(out["ptm_no_linker"][k]) == pytest.approx(want["ptm_no_linker"], abs=TOL)
        n_chains = len(want["chain_ptm"])
        np.testing.assert_allclose(out["chain_ptm"][k, :n_chains].numpy(), want["chain_ptm"], atol=TOL)
        exists = out["atom37_atom_exists"][k]
        for c in range(n_chains):
            sel = (out["chain_index"][k] == c)[:, None] & (exists > 0)
            assert float(out["chain_plddt"][k, c]) == pytest.approx(float(out["plddt"][k][sel].mean()), abs=TOL)
    # The model's pTM is unchanged: the full folded length of item 0, linker included.
    n0 = len(seqs[0].replace(":", "")) + 2 * 7
    assert float(out["ptm"][0]) == pytest.approx(naive_tm(out["ptm_logits"][0, :n0, :n0], np.ones(n0)), abs=TOL)
    # The lean path computes them before the probabilities are freed, bit for bit the same.
    lean = tiny.infer(seqs, num_recycles=0, chain_linker="G" * 7, return_pair_outputs=False)
    for key in ("iptm", "ptm_no_linker", "chain_ptm", "chain_plddt", "ptm"):
        torch.testing.assert_close(lean[key], out[key], rtol=0, atol=0, equal_nan=True)
    # An item's scores do not depend on what it is batched with.
    alone = tiny.infer(seqs[:1], num_recycles=0, chain_linker="G" * 7)
    torch.testing.assert_close(alone["iptm"][0], out["iptm"][0], rtol=0, atol=1e-12)


def test_forward_without_chain_index_is_unchanged(tiny):
    aa = torch.randint(0, 20, (1, 12))
    out = tiny(aa, num_recycles=0)
    assert not {"iptm", "ptm_no_linker", "chain_ptm", "chain_plddt"} & set(out)
