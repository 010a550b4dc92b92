"""Atom14 / atom37 features of a residue-type sequence (OpenFold's ``make_atom14_masks`` semantics).

"atom14" is the compact per-residue-type layout the structure module predicts; "atom37" is the fixed
layout of ``residue_constants.atom_types`` that PDB writing and the pLDDT head use.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import residue_constants as rc


def make_atom14_masks(aatype: Tensor) -> dict[str, Tensor]:
    """Per-residue atom existence masks and index maps between the atom14 and atom37 layouts.

    Args:
        aatype: ``[*, L]`` integer residue types 0-20 (20 = X, which has no atoms).
    Returns:
        ``atom14_atom_exists [*, L, 14]`` float32, ``residx_atom14_to_atom37 [*, L, 14]`` int64,
        ``residx_atom37_to_atom14 [*, L, 37]`` int64 (absent atoms map to index 0),
        ``atom37_atom_exists [*, L, 37]`` float32.
    """
    aatype = aatype.long()
    device = aatype.device

    def table(array, dtype):
        return torch.as_tensor(array, dtype=dtype, device=device)[aatype]

    return {
        "atom14_atom_exists": table(rc.restype_atom14_mask, torch.float32),
        "residx_atom14_to_atom37": table(rc.restype_atom14_to_atom37, torch.int64),
        "residx_atom37_to_atom14": table(rc.restype_atom37_to_atom14, torch.int64),
        "atom37_atom_exists": table(rc.restype_atom37_mask, torch.float32),
    }


def atom14_to_atom37(atom14: Tensor, batch: dict[str, Tensor]) -> Tensor:
    """Scatter atom14 data into the atom37 layout, zero where the atom does not exist.

    Args:
        atom14: ``[*, L, 14, C]`` (usually positions, ``C = 3``).
        batch: the dict of :func:`make_atom14_masks` for the same ``[*, L]``.
    Returns:
        ``[*, L, 37, C]`` in the dtype of ``atom14``.
    """
    index = batch["residx_atom37_to_atom14"]  # [*, L, 37]; leading dims broadcast against atom14's
    index = index.unsqueeze(-1).expand(*atom14.shape[:-2], index.shape[-1], atom14.shape[-1])
    atom37 = torch.gather(atom14, -2, index)
    return atom37 * batch["atom37_atom_exists"].to(atom14.dtype).unsqueeze(-1)
