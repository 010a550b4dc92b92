"""Rigid-body maths for the AlphaFold2 structure module.

A frame is a :class:`Rigid` ``(rot [*, 3, 3], trans [*, 3])`` mapping local coordinates ``x`` to
global ones ``rot @ x + trans``. The backbone is carried between blocks as a unit quaternion
(``[*, 4]``, scalar first) plus a translation, as in AlphaFold2 and OpenFold, because the
backbone update (Algorithm 23) composes quaternions.

Products of 3x3 matrices and 3-vectors are written as broadcast multiply-and-sum rather than
``matmul``: on GPUs a float32 ``matmul`` may run in TF32 (10-bit mantissa), which would cost
coordinates about 1e-3 relative precision.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


def rot_vec_mul(rot: Tensor, vec: Tensor) -> Tensor:
    """``rot @ vec`` for ``rot [*, 3, 3]`` and ``vec [*, 3]`` (broadcasting over ``*``)."""
    return (rot * vec.unsqueeze(-2)).sum(-1)


def rot_transpose_vec_mul(rot: Tensor, vec: Tensor) -> Tensor:
    """``rot^T @ vec``: the inverse rotation of an orthonormal ``rot``."""
    return (rot * vec.unsqueeze(-1)).sum(-2)


def rot_matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for ``[*, 3, 3]`` rotation tensors (broadcasting over ``*``)."""
    return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)


class Rigid(NamedTuple):
    """A batch of rigid transforms ``x -> rot @ x + trans``; batch shape is ``trans.shape[:-1]``."""

    rot: Tensor  # [*, 3, 3]
    trans: Tensor  # [*, 3]

    def compose(self, other: "Rigid") -> "Rigid":
        """``self o other``: apply ``other`` first, then ``self``."""
        return Rigid(rot_matmul(self.rot, other.rot), rot_vec_mul(self.rot, other.trans) + self.trans)

    def apply(self, pts: Tensor) -> Tensor:
        """Local -> global for points ``[*, 3]`` (batch shapes broadcast)."""
        return rot_vec_mul(self.rot, pts) + self.trans

    def invert_apply(self, pts: Tensor) -> Tensor:
        """Global -> local for points ``[*, 3]``."""
        return rot_transpose_vec_mul(self.rot, pts - self.trans)

    def unsqueeze(self, dim: int) -> "Rigid":
        """Insert a batch dimension; negative ``dim`` counts from the end of the batch shape."""
        if dim < 0:
            return Rigid(self.rot.unsqueeze(dim - 2), self.trans.unsqueeze(dim - 1))
        return Rigid(self.rot.unsqueeze(dim), self.trans.unsqueeze(dim))

    def scale_translation(self, factor: float) -> "Rigid":
        return Rigid(self.rot, self.trans * factor)

    def to_tensor_4x4(self) -> Tensor:
        """Homogeneous matrices ``[*, 4, 4]``."""
        out = self.trans.new_zeros((*self.trans.shape[:-1], 4, 4))
        out[..., :3, :3] = self.rot
        out[..., :3, 3] = self.trans
        out[..., 3, 3] = 1
        return out

    @staticmethod
    def from_tensor_4x4(t: Tensor) -> "Rigid":
        return Rigid(t[..., :3, :3], t[..., :3, 3])


def quat_to_rot(quat: Tensor) -> Tensor:
    """Rotation matrices ``[*, 3, 3]`` of unit quaternions ``[*, 4]`` given as ``(w, x, y, z)``."""
    a, b, c, d = quat.unbind(-1)
    aa, bb, cc, dd = a * a, b * b, c * c, d * d
    ab, ac, ad = a * b, a * c, a * d
    bc, bd, cd = b * c, b * d, c * d
    rows = (
        (aa + bb - cc - dd, 2 * (bc - ad), 2 * (bd + ac)),
        (2 * (bc + ad), aa - bb + cc - dd, 2 * (cd - ab)),
        (2 * (bd - ac), 2 * (cd + ab), aa - bb - cc + dd),
    )
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def quat_multiply_by_vec(quat: Tensor, vec: Tensor) -> Tensor:
    """Hamilton product ``quat * (0, vec)`` for ``quat [*, 4]`` and a pure quaternion ``vec [*, 3]``."""
    a, b, c, d = quat.unbind(-1)
    x, y, z = vec.unbind(-1)
    return torch.stack(
        (
            -b * x - c * y - d * z,
            a * x + c * z - d * y,
            a * y - b * z + d * x,
            a * z + b * y - c * x,
        ),
        dim=-1,
    )


def identity_backbone(batch_shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Black-hole initialisation of Algorithm 20 line 4: unit quaternions ``[*, 4]``, zero translations ``[*, 3]``."""
    quats = torch.zeros((*batch_shape, 4), dtype=dtype, device=device)
    quats[..., 0] = 1
    return quats, torch.zeros((*batch_shape, 3), dtype=dtype, device=device)


def compose_q_update_vec(quats: Tensor, rot: Tensor, trans: Tensor, update: Tensor) -> tuple[Tensor, Tensor]:
    """Backbone update of AlphaFold2 Algorithm 23, lines 2-4, in OpenFold's form.

    ``update [*, 6]`` holds ``(b, c, d)`` of the non-unit quaternion ``(1, b, c, d)`` and a translation
    ``t`` expressed in the current frame. ``rot`` must be ``quat_to_rot(quats)``. Returns the new unit
    quaternions ``q + q * (0, b, c, d)`` (normalised) and translations ``trans + rot @ t``.
    """
    q_vec, t_vec = update[..., :3], update[..., 3:]
    new_quats = quats + quat_multiply_by_vec(quats, q_vec)
    new_quats = new_quats / torch.linalg.norm(new_quats, dim=-1, keepdim=True)
    return new_quats, trans + rot_vec_mul(rot, t_vec)


def torsion_angles_to_frames(backbone: Rigid, angles: Tensor, aatype: Tensor, default_frames: Tensor) -> Rigid:
    """AlphaFold2 Algorithm 24 (computeAllAtomCoordinates, lines 1-10): the 8 rigid-group frames.

    Args:
        backbone: ``[*, L]`` backbone frames (global, already in Angstrom).
        angles: ``[*, L, 7, 2]`` (sin, cos) of omega, phi, psi, chi1-chi4.
        aatype: ``[*, L]`` residue types (0-20).
        default_frames: ``[21, 8, 4, 4]`` ``residue_constants.restype_rigid_group_default_frame``.
    Returns:
        ``[*, L, 8]`` frames of the groups (backbone, pre-omega, phi, psi, chi1-4) in global coordinates.
    """
    default = Rigid.from_tensor_4x4(default_frames[aatype])  # [*, L, 8]
    sin, cos = angles[..., 0], angles[..., 1]  # [*, L, 7]
    # Group 0 (backbone) gets the identity angle (sin 0, cos 1).
    sin = torch.cat([torch.zeros_like(sin[..., :1]), sin], dim=-1)  # [*, L, 8]
    cos = torch.cat([torch.ones_like(cos[..., :1]), cos], dim=-1)
    # default_rot @ R_x(angle) with R_x = [[1, 0, 0], [0, cos, -sin], [0, sin, cos]], written per column.
    col0, col1, col2 = default.rot.unbind(-1)  # each [*, L, 8, 3]
    s, c = sin.unsqueeze(-1), cos.unsqueeze(-1)
    rot = torch.stack((col0, col1 * c + col2 * s, col2 * c - col1 * s), dim=-1)
    local = Rigid(rot, default.trans)  # each group in its parent frame

    # chi2..chi4 frames are defined relative to the previous chi frame: chain them onto the backbone.
    chained = [Rigid(rot[..., 4, :, :], default.trans[..., 4, :])]
    for group in (5, 6, 7):
        chained.append(chained[-1].compose(Rigid(rot[..., group, :, :], default.trans[..., group, :])))
    to_backbone = Rigid(
        torch.cat([local.rot[..., :4, :, :]] + [f.rot.unsqueeze(-3) for f in chained], dim=-3),
        torch.cat([local.trans[..., :4, :]] + [f.trans.unsqueeze(-2) for f in chained], dim=-2),
    )
    return backbone.unsqueeze(-1).compose(to_backbone)


def frames_and_literature_positions_to_atom14_pos(
    frames: Rigid, aatype: Tensor, group_idx: Tensor, atom_mask: Tensor, lit_positions: Tensor
) -> Tensor:
    """AlphaFold2 Algorithm 24, line 11: place each atom14 slot's literature position in its group frame.

    Args:
        frames: ``[*, L, 8]`` global rigid-group frames from :func:`torsion_angles_to_frames`.
        aatype: ``[*, L]``.
        group_idx: ``[21, 14]`` rigid group of each atom14 slot.
        atom_mask: ``[21, 14]`` which slots exist.
        lit_positions: ``[21, 14, 3]`` idealised positions in the group frame.
    Returns:
        ``[*, L, 14, 3]`` atom positions, zero for absent slots.
    """
    groups = group_idx[aatype].long()  # [*, L, 14]
    rot = torch.gather(frames.rot, -3, groups[..., None, None].expand(*groups.shape, 3, 3))  # [*, L, 14, 3, 3]
    trans = torch.gather(frames.trans, -2, groups[..., None].expand(*groups.shape, 3))  # [*, L, 14, 3]
    positions = Rigid(rot, trans).apply(lit_positions[aatype])
    return positions * atom_mask[aatype].unsqueeze(-1)
