"""End-to-end parity of ESMFold with transformers' ``EsmForProteinFolding`` (randomised weights).

float64, two trunk passes: positions within 1e-4 A, pLDDT within 1e-3 (0-100), PAE within 1e-3, pTM 1e-5.
fp32, one pass, a padded batch of two lengths: positions within 0.02 A on real residues.
"""

from __future__ import annotations

import pytest
import torch
from transformers.models.esm.openfold_utils import compute_tm

from _esmfold_hf import FULL_TRUNK, REDUCED_TRUNK, encode, hf_folding_model, random_sequence, save_hf
from esmfold_fast import ESMFold

BACKENDS = ["reference", "torch"]


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    model = hf_folding_model(REDUCED_TRUNK, seed=3)
    return model, save_hf(model, tmp_path_factory.mktemp("reduced"))


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    model = hf_folding_model(FULL_TRUNK, seed=5)
    return model, save_hf(model, tmp_path_factory.mktemp("full"))


def _valid(mask: torch.Tensor) -> torch.Tensor:
    return mask.bool()


def _compare_fp64(hf_model, path, backend: str, sequences: list[str]) -> dict[str, float]:
    ours = ESMFold.from_pretrained(path, backend=backend, dtype=torch.float64)
    peer = hf_model.double()
    aatype, mask = encode(sequences)
    with torch.no_grad():
        ref = peer(input_ids=aatype, attention_mask=mask, num_recycles=1)
    out = ours.infer(sequences, num_recycles=1)
    v = _valid(mask)
    pair = v[:, :, None] & v[:, None, :]
    errs = {
        "positions": (out["positions"][-1] - ref["positions"][-1])[v].abs().max().item(),
        "plddt": (out["plddt"] - 100 * ref["plddt"])[v].abs().max().item(),
        "pae": (out["predicted_aligned_error"] - ref["predicted_aligned_error"])[pair].abs().max().item(),
        "s_z": (out["s_z"] - ref["s_z"])[pair].abs().max().item(),
    }
    # pTM per sequence over its true length, with the peer's own helper.
    ptm_ref = torch.stack([compute_tm(lg[:n, :n], max_bin=31, no_bins=64) for lg, n in zip(ref["ptm_logits"], mask.sum(1))])
    errs["ptm"] = (out["ptm"] - ptm_ref).abs().max().item()
    if len(sequences) == 1:  # transformers' own pTM is over the padded batch: comparable for one sequence
        errs["ptm_peer"] = (out["ptm"] - ref["ptm"]).abs().max().item()
    errs["mean_pos"] = ref["positions"][-1][v].abs().mean().item()
    return errs


def _check_fp64(errs: dict[str, float]) -> None:
    assert errs["mean_pos"] > 1.0  # the structure is not degenerate
    assert errs["positions"] < 1e-4, errs
    assert errs["plddt"] < 1e-3, errs
    assert errs["pae"] < 1e-3, errs
    assert errs["ptm"] < 1e-5, errs
    assert errs.get("ptm_peer", 0.0) < 1e-5, errs


@pytest.mark.parametrize("backend", BACKENDS)
def test_reduced_trunk_fp64_two_passes(reduced, backend):
    gen = torch.Generator().manual_seed(11)
    errs = _compare_fp64(*reduced, backend, [random_sequence(37, gen), random_sequence(17, gen)])
    print(backend, errs)
    _check_fp64(errs)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_full_width_trunk_fp64_two_passes(full, backend):
    gen = torch.Generator().manual_seed(12)
    errs = _compare_fp64(*full, backend, [random_sequence(23, gen)])
    print(backend, errs)
    _check_fp64(errs)


@pytest.mark.parametrize("which", ["reduced", pytest.param("full", marks=pytest.mark.slow)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_padded_batch_one_pass(request, which, backend):
    hf_model, path = request.getfixturevalue(which)
    gen = torch.Generator().manual_seed(13)
    sequences = [random_sequence(31, gen), random_sequence(19, gen)]
    ours = ESMFold.from_pretrained(path, backend=backend, dtype=torch.float32)
    peer = hf_model.float()
    aatype, mask = encode(sequences)
    with torch.no_grad():
        ref = peer(input_ids=aatype, attention_mask=mask, num_recycles=0)
    out = ours.infer(sequences, num_recycles=0)
    v = _valid(mask)
    err = (out["positions"][-1] - ref["positions"][-1])[v].abs().max().item()
    print(which, backend, "fp32 positions max err", err)
    assert ref["positions"][-1][v].abs().mean() > 1.0
    assert err < 0.02
    assert (out["plddt"] - 100 * ref["plddt"])[v].abs().max() < 0.5


def test_recycle_count_rule(reduced):
    """None -> max_recycles passes, N -> N + 1 (both references' rule)."""
    ours = ESMFold.from_pretrained(reduced[1], backend="torch", dtype=torch.float64)
    assert ours.trunk.num_passes(None) == REDUCED_TRUNK["max_recycles"]
    assert ours.trunk.num_passes(0) == 1 and ours.trunk.num_passes(3) == 4
    with pytest.raises(ValueError):
        ours.trunk.num_passes(-1)
    gen = torch.Generator().manual_seed(14)
    seq = random_sequence(19, gen)
    default = ours.infer(seq)["positions"]
    explicit = ours.infer(seq, num_recycles=REDUCED_TRUNK["max_recycles"] - 1)["positions"]
    one_less = ours.infer(seq, num_recycles=0)["positions"]
    torch.testing.assert_close(default, explicit, rtol=0, atol=0)
    assert (default - one_less).abs().max() > 1e-3


def test_multimer_encoding_and_linker_masking(reduced):
    ours = ESMFold.from_pretrained(reduced[1], backend="torch")
    linker = "G" * 4
    out = ours.infer(["ACDEF:GHIK:LMN", "ACD"], residue_index_offset=100, chain_linker=linker)
    n = 5 + 4 + 4 + 4 + 3
    assert out["aatype"].shape == (2, n)
    expected_chain = [0] * 5 + [0] * 4 + [1] * 4 + [1] * 4 + [2] * 3
    assert out["chain_index"][0].tolist() == expected_chain
    assert out["chain_index"][1].tolist() == [0] * 3 + [-1] * (n - 3)
    expected_idx = list(range(5)) + list(range(5, 9)) + [100 + i for i in range(9, 13)] + \
        [100 + i for i in range(13, 17)] + [200 + i for i in range(17, 20)]
    assert out["residue_index"][0].tolist() == expected_idx
    linker_pos = list(range(5, 9)) + list(range(13, 17))
    exists = out["atom37_atom_exists"]
    assert exists[0, linker_pos].sum() == 0
    assert (exists[0, [i for i in range(n) if i not in linker_pos]].sum(-1) > 0).all()
    assert exists[1, 3:].sum() == 0
    # The linker residues are folded (they sit in aatype as glycine) but never reported.
    assert out["aatype"][0, 5:9].tolist() == [7] * 4
    mean = (out["plddt"][0] * exists[0]).sum() / exists[0].sum()
    torch.testing.assert_close(out["mean_plddt"][0], mean)


def test_sequence_validation_and_unknown_letters(reduced):
    ours = ESMFold.from_pretrained(reduced[1], backend="torch")
    with pytest.raises(ValueError, match="AC1D"):
        ours.infer(["ACDE", "AC1D"])
    with pytest.raises(ValueError, match="A C"):
        ours.infer("A C")
    with pytest.raises(ValueError, match="empty chain"):
        ours.infer("ACD::EF")
    upper = ours.infer("ACDEFBZJ", num_recycles=0)
    lower = ours.infer("acdefbzj", num_recycles=0)
    assert upper["aatype"][0, 5:].tolist() == [20, 20, 20]
    torch.testing.assert_close(upper["positions"], lower["positions"], rtol=0, atol=0)
    pdb = ours.infer_pdb("ACDEF:GHI", num_recycles=0)
    assert " A " in pdb and " B " in pdb


def test_ptm_is_per_sequence_over_true_length(reduced):
    """A sequence's pTM and pLDDT do not depend on what it is batched with."""
    ours = ESMFold.from_pretrained(reduced[1], backend="reference", dtype=torch.float64)
    gen = torch.Generator().manual_seed(15)
    a, b = random_sequence(29, gen), random_sequence(13, gen)
    alone = ours.infer(b, num_recycles=0)
    batched = ours.infer([a, b], num_recycles=0)
    torch.testing.assert_close(batched["ptm"][1], alone["ptm"][0], rtol=0, atol=1e-9)
    torch.testing.assert_close(batched["plddt"][1, :13], alone["plddt"][0], rtol=0, atol=1e-7)
    torch.testing.assert_close(batched["mean_plddt"][1], alone["mean_plddt"][0], rtol=0, atol=1e-7)


@pytest.fixture(scope="module")
def full_fp32_and_bf16(full):
    _, path = full
    return ESMFold.from_pretrained(path, backend="torch"), ESMFold.from_pretrained(path, backend="torch", dtype=torch.bfloat16)


def test_bfloat16_keeps_float32_islands(full_fp32_and_bf16):
    """bf16 mode: the pair track computes in bf16; the sequence track, structure module and heads hold the
    checkpoint's float32 weights unrounded; outputs are float32, finite and close to the fp32 model's."""
    ours32, ours16 = full_fp32_and_bf16
    block = ours16.trunk.blocks[0]
    assert block.tri_mul_out.linear_a_p.weight.dtype == torch.bfloat16
    assert block.tri_att_start.mha.linear_q.weight.dtype == torch.bfloat16
    for module in ours16.float32_islands():
        for name, p in module.named_parameters():
            assert p.dtype == torch.float32, name
    sd32 = ours32.state_dict()
    for name, p in ours16.trunk.structure_module.named_parameters():
        assert torch.equal(p, sd32["trunk.structure_module." + name]), name  # loaded, not rounded
    seq = random_sequence(48, torch.Generator().manual_seed(41))
    a, b = ours32.infer(seq, num_recycles=0), ours16.infer(seq, num_recycles=0)
    assert b["s_z"].dtype == torch.bfloat16
    for key in ("positions", "plddt", "ptm", "predicted_aligned_error", "distogram_logits"):
        assert b[key].dtype == torch.float32 and torch.isfinite(b[key]).all(), key
    assert (a["plddt"] - b["plddt"]).abs().max() < 1.0  # 0-100 scale
    torch.testing.assert_close(b["s_z"].float(), a["s_z"], rtol=0.05, atol=0.05)


@pytest.mark.parametrize("length", [48, 97])
def test_bfloat16_positions_within_half_angstrom_of_fp32(full_fp32_and_bf16, length):
    """Issue 4 (d): bf16 positions within 0.5 A of fp32 after one pass (randomised full-width trunk)."""
    ours32, ours16 = full_fp32_and_bf16
    seq = random_sequence(length, torch.Generator().manual_seed(length))
    a, b = ours32.infer(seq, num_recycles=0), ours16.infer(seq, num_recycles=0)
    err = (a["positions"][-1] - b["positions"][-1]).norm(dim=-1).max().item()
    print(f"L={length} bf16 max atom displacement {err:.3f} A")
    assert a["positions"][-1].abs().mean() > 1.0  # not a degenerate structure
    assert err < 0.5
