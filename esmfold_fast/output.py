"""Structure and confidence output: PDB and mmCIF (Biopython, one structure) and a scores dict for JSON.

Every function takes the dict returned by ``ESMFold.infer`` (fair-esm's keys) and works per batch
item on the *real* residues only: padding and multimer linker residues (whose
``atom37_atom_exists`` is all zero) are dropped, chains get ids ``A, B, ...`` from ``chain_index``
and residue numbers restart at 1 in each chain, which is what a structural biologist expects rather
than the internal ``+512`` chain offset the model sees.

pLDDT is on the 0-100 scale; per-atom values go to the B-factor column and the per-residue value in
the scores is the CA atom's (AlphaFold's convention).
"""

from __future__ import annotations

import io
import json
import math
import os
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from . import residue_constants as rc

# Single-character chain ids the PDB format allows, in the order they are handed out.
CHAIN_IDS = string.ascii_uppercase + string.ascii_lowercase + string.digits
_CA = rc.atom_order["CA"]
# Fixed-width PDB fields: larger values need mmCIF.
_PDB_MAX_SERIAL = 99999
_PDB_MAX_RESSEQ = 9999


@dataclass
class _Item:
    """One batch item restricted to its real residues (``n`` of them)."""

    aatype: np.ndarray  # [n] int, indexes rc.restypes_with_x
    chain: np.ndarray  # [n] int, 0-based chain number
    resnum: np.ndarray  # [n] int, 1-based within each chain
    positions: np.ndarray  # [n, 37, 3] float, Angstrom
    atom_mask: np.ndarray  # [n, 37] bool
    plddt: np.ndarray  # [n, 37] float, 0-100
    present: np.ndarray  # [n] int, index of each residue in the padded length L

    @property
    def chain_ids(self) -> list[str]:
        return [CHAIN_IDS[c] for c in self.chain]

    def resname(self, j: int) -> str:
        return rc.restype_1to3.get(rc.restypes_with_x[self.aatype[j]], rc.unk_restype)


def output_to_pdbs(output: Mapping[str, Any]) -> list[str]:
    """One PDB string per batch item, written by Biopython's ``PDBIO`` (ATOM records with element
    column, TER per chain, END); B-factors are pLDDT."""
    atom37 = _atom37_positions(output)
    return [_item_to_pdb(_select_item(output, atom37, i)) for i in range(atom37.shape[0])]


def output_to_mmcif(output: Mapping[str, Any], name: str = "esmfold") -> list[str]:
    """One mmCIF string per batch item, written by Biopython's ``MMCIFIO``; B-factors are pLDDT."""
    from Bio.PDB.mmcifio import MMCIFIO

    atom37 = _atom37_positions(output)
    texts = []
    for i in range(atom37.shape[0]):
        writer = MMCIFIO()
        writer.set_structure(_item_to_structure(_select_item(output, atom37, i), name))
        buf = io.StringIO()
        writer.save(buf)
        texts.append(buf.getvalue())
    return texts


def scores(output: Mapping[str, Any], i: int) -> dict[str, Any]:
    """Confidence scores of batch item ``i`` as plain JSON types.

    Keys: ``mean_plddt`` (over all real atoms, as the model reports it), ``ptm``,
    ``plddt`` (per residue, the CA atom's pLDDT, 0-100), ``pae`` ([n, n] Angstrom, real residues
    only, row i = the residue whose frame the structure is aligned on), ``max_pae``, ``chain_ids`` and ``residue_numbers`` (per residue,
    matching the PDB), ``chains`` (id and sequence of each chain) and ``sequence`` (chains joined by
    ``':'``; letters the model reads as unknown appear as ``X``). Floats are rounded to 2 decimals,
    the precision of the PDB B-factor column; the PAE matrix dominates the size otherwise.
    """
    atom37 = _atom37_positions(output)
    item = _select_item(output, atom37, i)
    ca_plddt = _rounded_list(item.plddt[:, _CA])
    pae = _numpy(output["predicted_aligned_error"])[i][np.ix_(item.present, item.present)]  # [n, n]
    chains = []
    for c in np.unique(item.chain):
        letters = "".join(rc.restypes_with_x[a] for a in item.aatype[item.chain == c])
        chains.append({"id": CHAIN_IDS[c], "sequence": letters})
    result = {
        "mean_plddt": _round(_item_value(output["mean_plddt"], i)) if "mean_plddt" in output
        else _round(item.plddt[item.atom_mask].mean()),
        "ptm": _round(_item_value(output["ptm"], i), 4),
        "plddt": ca_plddt,
        "plddt_kind": "CA atom",
        "pae": _rounded_list(pae),
        "max_pae": _round(_item_value(output["max_predicted_aligned_error"], i))
        if "max_predicted_aligned_error" in output else None,
        "chain_ids": item.chain_ids,
        "residue_numbers": [int(r) for r in item.resnum],
        "chains": chains,
        "sequence": ":".join(ch["sequence"] for ch in chains),
    }
    return result


def scores_json(output: Mapping[str, Any], i: int, **extra: Any) -> str:
    """:func:`scores` of item ``i`` (plus ``extra`` keys first) as compact JSON text."""
    return json.dumps({**extra, **scores(output, i)}, separators=(",", ":"), allow_nan=False) + "\n"


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees a half-written file.

    The bytes go to a temporary file in the same directory (same file system, so the rename is
    atomic), are fsync'ed, then renamed over ``path``. On any failure the temporary file is removed
    and ``path`` is left as it was.
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu")
        if x.is_floating_point():
            x = x.float()  # bf16/fp16 have no numpy dtype
        return x.numpy()
    return np.asarray(x)


def _item_value(x: Any, i: int) -> float:
    """Element ``i`` of a per-item ``[B]`` score; a 0-d score (transformers' batch pTM) as it is."""
    x = _numpy(x)
    return float(x) if x.ndim == 0 else float(x[i])


def _atom37_positions(output: Mapping[str, Any]) -> np.ndarray:
    """Final-layer atom14 positions scattered to atom37 order: [B, L, 37, 3]."""
    from .protein import atom14_to_atom37

    positions = output["positions"]
    final = positions[-1]  # [B, L, 14, 3] from the last structure-module layer
    batch = {k: v for k, v in output.items() if k in ("residx_atom37_to_atom14", "atom37_atom_exists")}
    return _numpy(atom14_to_atom37(final, batch))


def _real_residues(output: Mapping[str, Any], i: int) -> np.ndarray:
    """Indices (into the padded length) of the residues the user asked for.

    Linker and padding residues have no atoms, but neither has an ``X`` residue (AlphaFold2's atom
    tables give UNK no atoms), so ``X`` is kept unless it is padding (``mask`` 0 or
    ``chain_index`` -1 where the output carries them). A linker is poly-G, never ``X``.
    """
    exists = _numpy(output["atom37_atom_exists"])[i] > 0.5  # [L, 37]
    aatype = _numpy(output["aatype"])[i]
    unknown = aatype == rc.unk_restype_index
    if "mask" in output:
        unknown &= _numpy(output["mask"])[i] > 0.5
    if "chain_index" in output:
        unknown &= _numpy(output["chain_index"])[i] >= 0
    return np.flatnonzero(exists.any(-1) | unknown)


def _select_item(output: Mapping[str, Any], atom37: np.ndarray, i: int) -> _Item:
    """Batch item ``i`` with padding and linker residues removed and residues renumbered per chain."""
    exists = _numpy(output["atom37_atom_exists"])[i] > 0.5  # [L, 37]
    present = _real_residues(output, i)
    if present.size == 0:
        raise ValueError(f"batch item {i} has no residues")
    length = exists.shape[0]
    if "chain_index" in output:
        chain = _numpy(output["chain_index"])[i].astype(np.int64)[present]
    else:
        chain = np.zeros(present.size, dtype=np.int64)
    if chain.min() < 0:
        raise ValueError(f"batch item {i}: residues with atoms have a negative chain_index")
    if chain.max() >= len(CHAIN_IDS):
        raise ValueError(
            f"batch item {i}: {chain.max() + 1} chains, more than the {len(CHAIN_IDS)} chain ids available"
        )
    residue_index = _numpy(output["residue_index"])[i].astype(np.int64)[present]
    resnum = np.empty_like(residue_index)
    for c in np.unique(chain):
        sel = chain == c
        resnum[sel] = residue_index[sel] - residue_index[sel].min() + 1
    plddt = _numpy(output["plddt"])[i]
    if plddt.ndim == 1:  # per-residue pLDDT: every atom of a residue gets its value
        plddt = np.repeat(plddt[:, None], exists.shape[1], axis=1)
    if plddt.shape[0] != length:
        raise ValueError(f"batch item {i}: plddt covers {plddt.shape[0]} residues, the structure {length}")
    positions = atom37[i][present]
    mask = exists[present]
    if not np.isfinite(positions[mask]).all():
        raise ValueError(f"batch item {i}: the predicted coordinates contain NaN or infinity")
    return _Item(
        aatype=_numpy(output["aatype"])[i].astype(np.int64)[present],
        chain=chain,
        resnum=resnum,
        positions=positions.astype(np.float64),
        atom_mask=mask,
        plddt=plddt[present].astype(np.float64),
        present=present,
    )


def _item_to_pdb(item: _Item) -> str:
    """PDB text written by Biopython's ``PDBIO`` from :func:`_item_to_structure`'s structure.

    The records match OpenFold's ``protein.to_pdb`` (ESMFold's own writer) column for column: one
    model without MODEL/ENDMDL or header records, ATOM records with occupancy 1.00, pLDDT as
    ``%6.2f`` in the B-factor column and the element symbol, a TER after each chain's last written
    residue and END. Atom serials are the structure's own (``preserve_atom_numbering``) so that, as
    in the wwPDB format and OpenFold, each TER takes a serial and the next chain continues after it;
    PDBIO's own numbering would give a TER the serial of the next chain's first atom. The only other
    difference from a hand-written formatter is trailing blanks: PDBIO pads TER to 80 columns and
    writes ``END`` as a 6-column record name, which no parser reads.

    PDBIO refuses serials over 99999 and residue numbers over 9999, but only while writing and
    without pointing anywhere (and a TER serial past 99999 it would write, one column too wide),
    so both limits are checked here first, with the way out: mmCIF.
    """
    from Bio.PDB.PDBIO import PDBIO

    if int(item.atom_mask.sum()) + len(np.unique(item.chain)) > _PDB_MAX_SERIAL:
        raise ValueError(
            "too many atoms for the PDB format's 5-digit serial numbers; write mmCIF (--format cif)"
        )
    if item.resnum.max() > _PDB_MAX_RESSEQ:
        raise ValueError("residue numbers over 9999 do not fit the PDB format; write mmCIF (--format cif)")
    writer = PDBIO()
    writer.set_structure(_item_to_structure(item, "esmfold"))
    buf = io.StringIO()
    writer.save(buf, preserve_atom_numbering=True)
    return buf.getvalue()


def _item_to_structure(item: _Item, name: str):
    """A Biopython ``Structure`` (one model) of the item, B-factors set to pLDDT.

    Atoms come in atom37 order (AlphaFold's) within each residue; residues without atoms (``X``)
    are left out. Serial numbers skip one after each chain, the serial of the PDB TER record
    (MMCIFIO numbers atoms itself). Coordinates stay float64, the values the PDB columns round.
    """
    from Bio.PDB.StructureBuilder import StructureBuilder

    builder = StructureBuilder()
    builder.init_structure(name)
    builder.init_model(0)
    builder.init_seg("    ")
    current_chain = None
    serial = 1
    for j in np.flatnonzero(item.atom_mask.any(-1)):  # X residues have no atoms to write
        if item.chain[j] != current_chain:
            if current_chain is not None:
                serial += 1  # the TER record closing the previous chain
            current_chain = item.chain[j]
            builder.init_chain(CHAIN_IDS[current_chain])
        builder.init_residue(item.resname(j), " ", int(item.resnum[j]), " ")
        for k in np.flatnonzero(item.atom_mask[j]):
            atom = rc.atom_types[k]
            builder.init_atom(
                atom,
                item.positions[j, k],
                round(float(item.plddt[j, k]), 2),  # the precision of the PDB column
                1.0,
                " ",
                atom if len(atom) == 4 else f" {atom:<3}",
                serial_number=serial,
                element=atom[0],
            )
            serial += 1
    return builder.get_structure()


def _rounded_list(values: np.ndarray, digits: int = 2) -> list:
    """Nested lists of Python floats (vectorised: a 2700 x 2700 PAE matrix is 7.3 M values)."""
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("non-finite values in the confidence scores")
    return np.round(values, digits).tolist()


def _round(value: Any, digits: int = 2) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"non-finite score {value}")
    return round(value, digits)
