"""Folding trunk and heads against transformers' modules (float64, randomised weights, odd sizes, masks)."""

from __future__ import annotations

import pytest
import torch
from transformers.models.esm import modeling_esmfold as hf
from transformers.models.esm.configuration_esm import StructureModuleConfig as HFStructureModuleConfig
from transformers.models.esm.configuration_esm import TrunkConfig as HFTrunkConfig
from transformers.models.esm.openfold_utils import compute_predicted_aligned_error
from transformers.models.esm.openfold_utils import compute_tm as hf_compute_tm

from _util import randomize_
from esmfold_fast.backend import set_backend
from esmfold_fast.config import StructureModuleConfig, TrunkConfig
from esmfold_fast.heads import compute_tm, plddt_from_logits, predicted_aligned_error, ptm_per_sequence
from esmfold_fast.trunk import FoldingTrunk, RelativePosition, TriangularSelfAttentionBlock, recycle_distogram_bins

SMALL = dict(sequence_state_dim=64, pairwise_state_dim=32, sequence_head_width=16, pairwise_head_width=16)
SMALL_SM = dict(sequence_dim=32, pairwise_dim=16, ipa_dim=8, resnet_dim=16, num_heads_ipa=4, num_blocks=2)


def _configs(num_blocks: int, width: dict, sm: dict, max_recycles: int = 2):
    hf_cfg = HFTrunkConfig(num_blocks=num_blocks, max_recycles=max_recycles, **width)
    hf_cfg.structure_module = HFStructureModuleConfig(**sm)
    ours = TrunkConfig(num_blocks=num_blocks, max_recycles=max_recycles, structure_module=StructureModuleConfig(**sm),
                       **width)
    return hf_cfg, ours


def _inputs(b: int, n: int, c_s: int, c_z: int, masked: bool, seed: int):
    gen = torch.Generator().manual_seed(seed)
    s = 2.0 * torch.randn(b, n, c_s, generator=gen, dtype=torch.float64)  # std > 1
    z = 2.0 * torch.randn(b, n, n, c_z, generator=gen, dtype=torch.float64)
    mask = torch.ones(b, n, dtype=torch.float64)
    if masked:
        mask[-1, n - n // 3 :] = 0
    return s, z, mask


def _pair_valid(mask):
    v = mask.bool()
    return v, v[:, :, None] & v[:, None, :]


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 5])
def test_block_matches_transformers(backend, masked, chunk_size):
    hf_cfg, cfg = _configs(1, SMALL, SMALL_SM)
    ref = randomize_(hf.EsmFoldTriangularSelfAttentionBlock(hf_cfg).double().eval(), seed=1)
    ours = TriangularSelfAttentionBlock(cfg).double().eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    set_backend(ours, backend)
    s, z, mask = _inputs(2, 17, 64, 32, masked, seed=2)
    with torch.no_grad():
        rs, rz = ref(s, z, mask=mask if masked else None)
        os_, oz = ours(s.clone(), z.clone(), mask=mask if masked else None, chunk_size=chunk_size)
    v, pv = _pair_valid(mask)
    assert rz.abs().max() > 1.0
    assert (os_ - rs)[v].abs().max() < 1e-10
    assert (oz - rz)[pv].abs().max() < 1e-10


def test_full_width_block_matches_transformers():
    width = dict(sequence_state_dim=1024, pairwise_state_dim=128, sequence_head_width=32, pairwise_head_width=32)
    hf_cfg, cfg = _configs(1, width, SMALL_SM)
    ref = randomize_(hf.EsmFoldTriangularSelfAttentionBlock(hf_cfg).double().eval(), seed=3)
    ours = TriangularSelfAttentionBlock(cfg).double().eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    s, z, mask = _inputs(1, 13, 1024, 128, masked=True, seed=4)
    with torch.no_grad():
        rs, rz = ref(s, z, mask=mask)
        os_, oz = ours(s.clone(), z.clone(), mask=mask, chunk_size=None)
    v, pv = _pair_valid(mask)
    assert (os_ - rs)[v].abs().max() < 1e-9
    assert (oz - rz)[pv].abs().max() / rz[pv].abs().max() < 1e-12


def test_block_with_autograd_matches_inplace_path():
    """With autograd on, updates are added out of place; values equal the in-place path, backward works."""
    hf_cfg, cfg = _configs(1, SMALL, SMALL_SM)
    ours = randomize_(TriangularSelfAttentionBlock(cfg).double().eval(), seed=5)
    set_backend(ours, "reference")
    s, z, mask = _inputs(2, 11, 64, 32, masked=True, seed=6)
    z_in = z.clone()
    with torch.no_grad():
        ns, nz = ours(s.clone(), z_in, mask=mask, chunk_size=4)
    assert nz.data_ptr() == z_in.data_ptr()  # under no_grad the pair state is updated in place
    zg = z.clone().requires_grad_(True)
    gs, gz = ours(s, zg, mask=mask, chunk_size=4)
    torch.testing.assert_close(gs, ns, rtol=0, atol=1e-12)
    torch.testing.assert_close(gz, nz, rtol=0, atol=1e-12)
    gz.sum().backward()
    assert torch.isfinite(zg.grad).all() and zg.grad.abs().sum() > 0
    assert ours.tri_att_end.mha.linear_q.weight.grad is not None


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_trunk_with_recycling_matches_transformers(backend):
    hf_cfg, cfg = _configs(2, SMALL, SMALL_SM, max_recycles=3)
    ref = randomize_(hf.EsmFoldingTrunk(hf_cfg).double().eval(), seed=7)
    ours = FoldingTrunk(cfg).double().eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    set_backend(ours, backend)
    s, z, mask = _inputs(2, 19, 64, 32, masked=True, seed=8)
    gen = torch.Generator().manual_seed(9)
    aa = torch.randint(0, 20, (2, 19), generator=gen)
    residx = torch.arange(19).expand(2, -1).clone()
    residx[0, 10:] += 40  # a chain break beyond the clipping distance
    ours.set_chunk_size(4)
    with torch.no_grad():
        r = ref(s, z, aa, residx, mask, no_recycles=1)  # transformers names it no_recycles
        o = ours(s, z, aa, residx, mask, num_recycles=1)
    v, pv = _pair_valid(mask)
    assert (o["s_s"] - r["s_s"])[v].abs().max() < 1e-9
    assert (o["s_z"] - r["s_z"])[pv].abs().max() < 1e-9
    # The structure module's own float64 agreement with transformers is ~1e-5 A (its geometry tables are
    # float32); the trunk states above are exact to rounding.
    assert (o["positions"][-1] - r["positions"][-1])[v].abs().max() < 1e-4
    # zero pair features may be passed as None (what ESMFold does): identical result
    with torch.no_grad():
        r0 = ref(s, torch.zeros_like(z), aa, residx, mask, no_recycles=0)
        o0 = ours(s, None, aa, residx, mask, num_recycles=0)
    assert (o0["s_z"] - r0["s_z"])[pv].abs().max() < 1e-9
    assert (o0["positions"][-1] - r0["positions"][-1])[v].abs().max() < 1e-4


def test_relative_position_and_recycle_bins_match_transformers():
    hf_cfg, cfg = _configs(1, SMALL, SMALL_SM)
    ref = randomize_(hf.EsmFoldRelativePosition(hf_cfg).double(), seed=10)
    ours = RelativePosition(cfg).double()
    ours.load_state_dict(ref.state_dict())
    gen = torch.Generator().manual_seed(11)
    residx = torch.cumsum(torch.randint(1, 9, (2, 37), generator=gen), dim=1)
    mask = torch.ones(2, 37)
    mask[1, 30:] = 0
    torch.testing.assert_close(ours(residx, mask), ref(residx, mask), rtol=0, atol=0)
    coords = 8.0 * torch.randn(2, 37, 3, 3, generator=gen, dtype=torch.float64)
    bins = recycle_distogram_bins(coords)
    torch.testing.assert_close(bins, hf.EsmFoldingTrunk.distogram(coords, 3.375, 21.375, 15), rtol=0, atol=0)
    assert bins.min() == 0 and bins.max() == 14


def test_heads_match_openfold_helpers():
    gen = torch.Generator().manual_seed(12)
    logits = 3.0 * torch.randn(2, 23, 23, 64, generator=gen, dtype=torch.float64)
    mask = torch.ones(2, 23)
    mask[1, 17:] = 0
    ours = predicted_aligned_error(logits)
    ref = compute_predicted_aligned_error(logits, max_bin=31, no_bins=64)
    for key in ref:
        torch.testing.assert_close(ours[key].double(), ref[key].double(), rtol=0, atol=1e-12)
    for i, n in enumerate((23, 17)):
        torch.testing.assert_close(compute_tm(logits[i, :n, :n]), hf_compute_tm(logits[i, :n, :n], max_bin=31, no_bins=64))
    expected = torch.stack([hf_compute_tm(logits[0]), hf_compute_tm(logits[1, :17, :17])])
    torch.testing.assert_close(ptm_per_sequence(logits, mask), expected, rtol=0, atol=1e-12)
    lddt_logits = 2.0 * torch.randn(2, 23, 37, 50, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(plddt_from_logits(lddt_logits), 100 * hf.categorical_lddt(lddt_logits, bins=50))


def test_in_place_head_helpers_are_exact():
    """Chunked, in-place distogram symmetrisation is bit-identical to (x + x^T) / 2; pTM from the PAE
    probabilities equals pTM from the logits, padded sequences included."""
    from esmfold_fast.heads import pair_linear, symmetric_distogram_logits
    from esmfold_fast.memory import HEAD_CHUNK_ELEMENTS

    gen = torch.Generator().manual_seed(31)
    n = 1 + int((4 * HEAD_CHUNK_ELEMENTS / 64) ** 0.5)  # several tiles per side, a partial last one
    head = randomize_(torch.nn.Linear(16, 64), seed=32)
    z = 3.0 * torch.randn(1, n, n, 16, generator=gen)
    with torch.no_grad():
        full = head(z)
        torch.testing.assert_close(pair_linear(head, z), full, rtol=0, atol=0)
        assert torch.equal(symmetric_distogram_logits(head, z), (full + full.transpose(1, 2)) / 2)
    logits = 3.0 * torch.randn(2, 23, 23, 64, generator=gen, dtype=torch.float64)
    mask = torch.ones(2, 23)
    mask[1, 17:] = 0
    probs = predicted_aligned_error(logits)["aligned_confidence_probs"]
    torch.testing.assert_close(ptm_per_sequence(logits, mask, probs=probs), ptm_per_sequence(logits, mask),
                               rtol=0, atol=1e-14)
