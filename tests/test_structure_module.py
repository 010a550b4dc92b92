"""Parity of residue constants, rigid geometry, atom14/atom37 features and the structure module
against transformers' vendored OpenFold code and ``EsmFoldStructureModule``.

transformers forces every rotation and translation to float32 (``Rotation.__init__`` and
``Rigid.__init__`` cast), so its ``.double()`` run is only float32-accurate in the geometry. The
float64 tests lift that cast (fixture ``peer_float64``) so both sides compute in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.models.esm import modeling_esmfold as peer_mf
from transformers.models.esm.configuration_esm import StructureModuleConfig as PeerSMConfig
from transformers.models.esm.openfold_utils import data_transforms as peer_dt
from transformers.models.esm.openfold_utils import feats as peer_feats
from transformers.models.esm.openfold_utils import residue_constants as peer_rc
from transformers.models.esm.openfold_utils import rigid_utils as peer_ru

from _util import randomize_
from esmfold_fast import residue_constants as rc
from esmfold_fast import rigid
from esmfold_fast.config import StructureModuleConfig
from esmfold_fast.protein import atom14_to_atom37, make_atom14_masks
from esmfold_fast.structure_module import StructureModule

OUTPUT_KEYS = ("frames", "sidechain_frames", "unnormalized_angles", "angles", "positions", "states", "single")


@pytest.fixture
def peer_float64(monkeypatch):
    """Let the peer's Rotation / Rigid keep the dtype they are given instead of casting to float32."""
    orig_rotation_init, orig_rigid_init = peer_ru.Rotation.__init__, peer_ru.Rigid.__init__

    def rotation_init(self, rot_mats=None, quats=None, normalize_quats=True):
        orig_rotation_init(self, rot_mats=rot_mats, quats=quats, normalize_quats=False)  # its validation
        if quats is not None and normalize_quats:
            quats = quats / torch.linalg.norm(quats, dim=-1, keepdim=True)
        self._rot_mats, self._quats = rot_mats, quats

    def rigid_init(self, rots, trans):
        orig_rigid_init(self, rots, trans)
        if trans is not None:
            self._trans = trans

    monkeypatch.setattr(peer_ru.Rotation, "__init__", rotation_init)
    monkeypatch.setattr(peer_ru.Rigid, "__init__", rigid_init)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _aatype(shape: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """Random residue types covering all 20 amino acids and X (needs B * L >= 21)."""
    n = shape[0] * shape[1]
    assert n >= 21
    flat = torch.cat([torch.randperm(21, generator=gen), torch.randint(0, 21, (n - 21,), generator=gen)])
    return flat[torch.randperm(n, generator=gen)].view(shape)


def _random_quats(shape, gen, dtype=torch.float64):
    q = torch.randn(*shape, 4, generator=gen, dtype=dtype)
    return q / torch.linalg.norm(q, dim=-1, keepdim=True)


# --- residue constants ---------------------------------------------------------------------------

LIST_NAMES = (
    "restypes", "restypes_with_x", "restype_order", "restype_order_with_x", "restype_num", "restype_1to3",
    "restype_3to1", "atom_types", "atom_order", "atom_type_num", "restype_name_to_atom14_names",
    "residue_atoms", "chi_angles_atoms", "chi_angles_mask", "rigid_group_atom_positions", "unk_restype_index",
)
ARRAY_NAMES = (
    "restype_atom14_to_rigid_group", "restype_atom14_mask", "restype_atom14_rigid_group_positions",
    "restype_rigid_group_default_frame",
)


@pytest.mark.parametrize("name", LIST_NAMES)
def test_residue_constant_tables_match_openfold(name):
    assert getattr(rc, name) == getattr(peer_rc, name)


@pytest.mark.parametrize("name", ARRAY_NAMES)
def test_residue_constant_arrays_match_openfold(name):
    ours, theirs = getattr(rc, name), getattr(peer_rc, name)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)


def test_atom37_mask_matches_openfold():
    np.testing.assert_array_equal(rc.restype_atom37_mask[:20], peer_rc.STANDARD_ATOM_MASK[:20])
    assert not rc.restype_atom37_mask[20].any() and not rc.restype_atom14_mask[20].any()
    # Default frames are rigid: orthonormal rotations with det +1 for every defined group.
    rot = rc.restype_rigid_group_default_frame[:20, :, :3, :3].astype(np.float64)
    defined = np.abs(rot).sum((-1, -2)) > 0
    eye = np.einsum("...ji,...jk->...ik", rot[defined], rot[defined])
    np.testing.assert_allclose(eye, np.broadcast_to(np.eye(3), eye.shape), atol=1e-6)


# --- atom14 / atom37 features --------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 17), (1, 37)])
def test_make_atom14_masks_matches_openfold(shape):
    aatype = _aatype(shape, _gen(shape[1]))
    ours = make_atom14_masks(aatype)
    theirs = peer_dt.make_atom14_masks({"aatype": aatype.clone()})
    for key in ("atom14_atom_exists", "residx_atom14_to_atom37", "residx_atom37_to_atom14", "atom37_atom_exists"):
        assert ours[key].dtype == theirs[key].dtype, key
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_atom14_to_atom37_matches_openfold(dtype):
    gen = _gen(3)
    aatype = _aatype((3, 17), gen)
    batch = make_atom14_masks(aatype)
    atom14 = (torch.randn(3, 17, 14, 3, generator=gen, dtype=torch.float64) * 10).to(dtype)
    ours = atom14_to_atom37(atom14, batch)
    theirs = peer_feats.atom14_to_atom37(atom14, peer_dt.make_atom14_masks({"aatype": aatype}))
    assert ours.shape == (3, 17, 37, 3) and ours.dtype == dtype
    assert torch.equal(ours, theirs.to(dtype))
    # Every existing atom37 slot holds its atom14 value, every other slot is zero.
    exists = batch["atom37_atom_exists"].bool()
    assert (ours[~exists] == 0).all() and ours[exists].abs().gt(0).all()


# --- rigid geometry ------------------------------------------------------------------------------


def test_quaternion_maths_matches_openfold(peer_float64):
    gen = _gen(5)
    quats = _random_quats((37,), gen)
    rot = rigid.quat_to_rot(quats)
    torch.testing.assert_close(rot, peer_ru.quat_to_rot(quats), rtol=0, atol=1e-14)
    torch.testing.assert_close(rot @ rot.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(37, 3, 3),
                               rtol=0, atol=1e-14)
    trans = torch.randn(37, 3, generator=gen, dtype=torch.float64) * 5
    update = torch.randn(37, 6, generator=gen, dtype=torch.float64) * 2
    new_q, new_t = rigid.compose_q_update_vec(quats, rot, trans, update)
    theirs = peer_ru.Rigid(peer_ru.Rotation(quats=quats), trans).compose_q_update_vec(update)
    torch.testing.assert_close(new_q, theirs.get_rots().get_quats(), rtol=0, atol=1e-14)
    torch.testing.assert_close(new_t, theirs.get_trans(), rtol=0, atol=1e-13)


def test_torsion_frames_and_atom14_positions_match_openfold(peer_float64):
    gen = _gen(7)
    B, L = 2, 17
    aatype = _aatype((B, L), gen)
    quats = _random_quats((B, L), gen)
    trans = torch.randn(B, L, 3, generator=gen, dtype=torch.float64) * 20
    angles = torch.randn(B, L, 7, 2, generator=gen, dtype=torch.float64)
    angles = angles / angles.norm(dim=-1, keepdim=True)
    tables = {
        name: torch.tensor(getattr(rc, attr), dtype=torch.float64)
        for name, attr in (
            ("default_frames", "restype_rigid_group_default_frame"),
            ("atom_mask", "restype_atom14_mask"),
            ("lit_positions", "restype_atom14_rigid_group_positions"),
        )
    }
    group_idx = torch.tensor(rc.restype_atom14_to_rigid_group)

    ours_frames = rigid.torsion_angles_to_frames(
        rigid.Rigid(rigid.quat_to_rot(quats), trans), angles, aatype, tables["default_frames"]
    )
    peer_backbone = peer_ru.Rigid(peer_ru.Rotation(rot_mats=peer_ru.quat_to_rot(quats)), trans)
    peer_frames = peer_feats.torsion_angles_to_frames(peer_backbone, angles, aatype, tables["default_frames"])
    torch.testing.assert_close(ours_frames.to_tensor_4x4(), peer_frames.to_tensor_4x4(), rtol=0, atol=1e-12)

    ours_pos = rigid.frames_and_literature_positions_to_atom14_pos(
        ours_frames, aatype, group_idx, tables["atom_mask"], tables["lit_positions"]
    )
    peer_pos = peer_feats.frames_and_literature_positions_to_atom14_pos(
        peer_frames, aatype, tables["default_frames"], group_idx, tables["atom_mask"], tables["lit_positions"]
    )
    assert ours_pos.shape == (B, L, 14, 3)
    torch.testing.assert_close(ours_pos, peer_pos, rtol=0, atol=1e-12)
    # Idealised geometry survives: the N-CA bond has its literature length for every real residue.
    real = aatype < 20
    bond = (ours_pos[..., 0, :] - ours_pos[..., 1, :]).norm(dim=-1)[real]
    lit = tables["lit_positions"][aatype[real], 0].norm(dim=-1)
    torch.testing.assert_close(bond, lit, rtol=0, atol=1e-12)


# --- structure module ----------------------------------------------------------------------------

SMALL = dict(sequence_dim=48, pairwise_dim=24, ipa_dim=8, resnet_dim=24, num_heads_ipa=4, num_qk_points=3,
             num_v_points=5, num_blocks=3, num_transition_layers=2, num_resnet_blocks=1)
ESMFOLD = dict(sequence_dim=384, pairwise_dim=128, ipa_dim=16, resnet_dim=128, num_heads_ipa=12, num_qk_points=4,
               num_v_points=8, num_blocks=8)


def _pair(kwargs: dict, seed: int) -> tuple[StructureModule, torch.nn.Module]:
    peer = peer_mf.EsmFoldStructureModule(PeerSMConfig(**kwargs)).eval()
    randomize_(peer, seed=seed)  # includes the zero-initialised linear_out, bb_update, head_weights
    ours = StructureModule(StructureModuleConfig(**kwargs)).eval()
    ours.load_state_dict(peer.state_dict(), strict=True)
    return ours, peer


def _inputs(kwargs: dict, B: int, L: int, seed: int, padded: bool):
    gen = _gen(seed)
    s = torch.randn(B, L, kwargs["sequence_dim"], generator=gen, dtype=torch.float64) * 3
    z = torch.randn(B, L, L, kwargs["pairwise_dim"], generator=gen, dtype=torch.float64) * 3
    aatype = _aatype((B, L), gen)
    mask = None
    if padded:
        mask = torch.ones(B, L, dtype=torch.float64)
        mask[-1, L - L // 3:] = 0
    return s, z, aatype, mask


def _run(module, s, z, aatype, mask, dtype):
    with torch.no_grad():
        return module.to(dtype)(
            {"single": s.to(dtype), "pair": z.to(dtype)}, aatype, None if mask is None else mask.to(dtype)
        )


def test_state_dict_keys_and_buffers():
    ours, peer = _pair(SMALL, seed=0)
    assert list(ours.state_dict()) == list(peer.state_dict())
    assert not any(n in ours.state_dict() for n in ("default_frames", "group_idx", "atom_mask", "lit_positions"))
    ours.to(torch.bfloat16)
    # Literature geometry must not be rounded to bf16 with the weights.
    assert ours.default_frames.dtype == torch.float32 and ours.lit_positions.dtype == torch.float32
    assert ours.ipa.linear_q.weight.dtype == torch.bfloat16
    assert torch.equal(ours.lit_positions, torch.tensor(rc.restype_atom14_rigid_group_positions))


@pytest.mark.parametrize(
    "kwargs,B,L,padded", [(SMALL, 2, 17, True), (SMALL, 1, 37, False), (ESMFOLD, 2, 17, True)],
    ids=["small-L17-padded", "small-L37-nomask", "esmfold-L17-padded"],
)
def test_structure_module_float64_parity(peer_float64, kwargs, B, L, padded):
    ours, peer = _pair(kwargs, seed=L)
    inputs = _inputs(kwargs, B, L, seed=L + 1, padded=padded)
    got, want = _run(ours, *inputs, torch.float64), _run(peer, *inputs, torch.float64)
    n = kwargs["num_blocks"]
    assert got["positions"].shape == (n, B, L, 14, 3) and got["sidechain_frames"].shape == (n, B, L, 8, 4, 4)
    assert want["positions"].abs().max() > 5  # the frames really moved
    for key in OUTPUT_KEYS:
        assert got[key].shape == want[key].shape and got[key].dtype == torch.float64, key
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-8, msg=key)


def test_structure_module_float32(peer_float64):
    """fp32 vs the peer's fp32 (valid residues), and no less accurate than the peer against fp64."""
    kwargs, B, L = ESMFOLD, 1, 37
    ours, peer = _pair(kwargs, seed=11)
    inputs = _inputs(kwargs, B, L, seed=12, padded=True)
    ref = _run(ours, *inputs, torch.float64)
    got, want = _run(ours, *inputs, torch.float32), _run(peer, *inputs, torch.float32)
    # Padded residues are excluded: their logits all carry the -1e5 mask, which float32 resolves only
    # to ~0.01, so their coordinates are rounding noise in the peer as well (both differ from fp64 by ~1 A).
    valid = inputs[3].bool()
    for key in OUTPUT_KEYS:
        assert got[key].dtype == torch.float32, key
        g, w, r = (t[key][..., valid, :] if key == "single" else t[key][:, valid] for t in (got, want, ref))
        err_ours, err_peer = (g.double() - r).abs().max().item(), (w.double() - r).abs().max().item()
        assert err_ours <= 2 * err_peer + 1e-5, (key, err_ours, err_peer)
        if key in ("positions", "frames", "sidechain_frames"):
            assert (g - w).abs().max().item() < 1e-3, key  # Angstrom


def test_structure_module_bfloat16():
    """bf16 weights and inputs: geometry runs in float32 and is no less accurate than the peer's bf16."""
    kwargs = dict(SMALL, num_blocks=2)
    ours, peer = _pair(kwargs, seed=21)
    inputs = _inputs(kwargs, 2, 17, seed=22, padded=True)
    ref = _run(ours, *inputs, torch.float64)
    got, want = _run(ours, *inputs, torch.bfloat16), _run(peer, *inputs, torch.bfloat16)
    assert got["positions"].dtype == torch.float32 and got["states"].dtype == torch.bfloat16
    valid = inputs[3].bool()
    for key in ("positions", "angles", "states"):
        assert torch.isfinite(got[key]).all(), key
        err_ours = (got[key][:, valid].double() - ref[key][:, valid]).abs().max().item()
        err_peer = (want[key][:, valid].double() - ref[key][:, valid]).abs().max().item()
        assert err_ours <= 1.5 * err_peer + 1e-3, (key, err_ours, err_peer)


def test_structure_module_backward():
    kwargs = dict(SMALL, num_blocks=2)
    ours, _ = _pair(kwargs, seed=31)
    s, z, aatype, mask = _inputs(kwargs, 2, 17, seed=32, padded=True)
    ours.double()
    s.requires_grad_(True)
    out = ours({"single": s, "pair": z}, aatype, mask)
    (out["positions"].square().sum() + out["single"].sum()).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().max() > 0
    for name, p in ours.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
