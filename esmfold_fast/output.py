"""Structure and confidence output: PDB and mmCIF (Biopython, one structure), ModelCIF (python-modelcif,
with pLDDT / pTM / ipTM as quality metrics), a scores dict for JSON and the PAE in the AlphaFold DB layout.

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
from typing import Any, Mapping, Sequence

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


def output_to_pdbs(output: Mapping[str, Any], items: Sequence[int] | None = None) -> list[str]:
    """One PDB string per batch item (``items``: only those, in that order), written by Biopython's
    ``PDBIO`` (ATOM records with element column, TER per chain, END); B-factors are pLDDT."""
    atom37 = _atom37_positions(output)
    return [_item_to_pdb(_select_item(output, atom37, i)) for i in _items(atom37, items)]


def _items(atom37: np.ndarray, items: Sequence[int] | None) -> Sequence[int]:
    return range(atom37.shape[0]) if items is None else items


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
    """Confidence scores of batch item ``i`` as plain JSON types (never NaN or infinity).

    Keys:

    - ``mean_plddt``: pLDDT (0-100) over all real atoms, as the model reports it.
    - ``ptm``: the model's pTM, unchanged: over every residue of the folded chain, a multimer's poly-G
      linker included (what fair-esm and transformers report, so it compares with their numbers).
    - ``ptm_no_linker``: pTM over the real residues only (linker and padding left out, d0 from their
      number); for a monomer it equals ``ptm``. ``null`` when the output has neither this score nor the
      aligned-error probabilities (``ESMFold.forward`` called without ``chain_index``).
    - ``iptm``: AlphaFold-Multimer's interface pTM over the real residues (anchor i scores only the
      residues j of other chains; best anchor); ``null`` for a single-chain item (or when unavailable,
      as above).
    - ``plddt`` (per residue, the CA atom's pLDDT, 0-100) with ``plddt_kind`` ``"CA atom"``.
    - ``pae`` ([n, n] Angstrom, real residues only, row i = the residue whose frame the structure is
      aligned on) and ``max_pae``.
    - ``chain_ids`` and ``residue_numbers`` (per residue, matching the PDB).
    - ``chains``: per chain ``id``, ``sequence``, ``plddt`` (mean pLDDT over the chain's atoms, as
      ``mean_plddt`` is over the item's; ``null`` for a chain without atoms, e.g. all ``X``) and ``ptm``
      (pTM of the chain's own PAE sub-block, d0 from the chain's length; ``null`` when unavailable).
    - ``sequence``: chains joined by ``':'``; letters the model reads as unknown appear as ``X``.

    Floats are rounded to 2 decimals (pTM-like scores to 4), the precision of the PDB B-factor column;
    the PAE matrix dominates the size otherwise.
    """
    atom37 = _atom37_positions(output)
    item = _select_item(output, atom37, i)
    ca_plddt = _rounded_list(item.plddt[:, _CA])
    pae = _numpy(output["predicted_aligned_error"])[i][np.ix_(item.present, item.present)]  # [n, n]
    tm = _chain_tm(output, i, item)
    chains = []
    for c in np.unique(item.chain):
        sel = item.chain == c
        letters = "".join(rc.restypes_with_x[a] for a in item.aatype[sel])
        atoms = item.atom_mask[sel]
        chain_plddt = _round(item.plddt[sel][atoms].mean()) if atoms.any() else None
        chain_ptm = tm["chain_ptm"][c] if tm is not None and c < len(tm["chain_ptm"]) else None
        chains.append({
            "id": CHAIN_IDS[c],
            "sequence": letters,
            "plddt": chain_plddt,
            "ptm": _round_or_none(chain_ptm, 4),
        })
    result = {
        "mean_plddt": _round(_item_value(output["mean_plddt"], i)) if "mean_plddt" in output
        else _round(item.plddt[item.atom_mask].mean()),
        "ptm": _round(_item_value(output["ptm"], i), 4),
        "ptm_no_linker": _round_or_none(tm["ptm_no_linker"] if tm is not None else None, 4),
        "iptm": _round_or_none(tm["iptm"] if tm is not None else None, 4),
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


def pae_json(output: Mapping[str, Any], i: int) -> str:
    """The PAE of batch item ``i`` in the AlphaFold DB layout (``*-predicted_aligned_error_v4.json``).

    A JSON list holding one object: ``predicted_aligned_error``, the [n, n] matrix over the real
    residues (linker and padding removed; row i = the residue whose frame is aligned on, as in
    AlphaFold) as a list of lists of Angstrom values rounded to 2 decimals, and
    ``max_predicted_aligned_error`` (the last bin centre, 31.75 for ESMFold's head). AlphaFold's own
    ``pae_json`` writes 1 decimal and the AFDB files integers; readers take any number.
    """
    present = _real_residues(output, i)
    if present.size == 0:
        raise ValueError(f"batch item {i} has no residues")
    pae = _numpy(output["predicted_aligned_error"])[i][np.ix_(present, present)]
    max_pae = _round(_item_value(output["max_predicted_aligned_error"], i))
    body = [{"predicted_aligned_error": _rounded_list(pae), "max_predicted_aligned_error": max_pae}]
    return json.dumps(body, separators=(",", ":"), allow_nan=False) + "\n"


def output_to_modelcif(
    output: Mapping[str, Any], name: str = "esmfold", items: Sequence[int] | None = None
) -> list[str]:
    """One ModelCIF (mmCIF with the ``ma_`` categories) string per batch item, written by python-modelcif.

    The same atoms, coordinates, chain ids and residue numbers as :func:`output_to_pdbs` (pLDDT in the
    B-factor column), plus: one entity per distinct chain sequence (identical chains of a homomer share
    it, as in the PDB) and one asym unit per chain, each with its full sequence (``X`` as ``UNK``);
    the per-residue pLDDT (the CA atom's, 0-100) as a local ``pLDDT`` metric of every residue with atoms
    (``_ma_qa_metric_local``); the mean pLDDT and pTM as global metrics, and ipTM too for a complex
    (``_ma_qa_metric_global``). pTM is the model's ``ptm`` (see :func:`scores`). ``name`` is the data
    block name and title (whitespace becomes ``_``). ``items``: the batch items to write (default all),
    in that order; ``output_to_modelcif(out, name, items=[i])[0]`` builds item ``i`` alone.

    Needs the optional ``modelcif`` package (``pip install 'esmfold-fast[cif]'``).
    """
    try:
        import ihm
        import modelcif
        import modelcif.data
        import modelcif.dumper
        import modelcif.model
        import modelcif.protocol
        import modelcif.qa_metric
    except ImportError as exc:
        raise ImportError(
            "ModelCIF output needs python-modelcif: pip install 'esmfold-fast[cif]' (or pip install modelcif)"
        ) from exc

    atom37 = _atom37_positions(output)
    block = "_".join(str(name).split()) or "esmfold"
    texts = []
    for i in _items(atom37, items):
        item = _select_item(output, atom37, i)
        tm = _chain_tm(output, i, item)
        software = modelcif.Software(
            "ESMFold", "model building", "ESMFold structure prediction (esmfold-fast re-implementation)",
            "https://github.com/facebookresearch/esm", "package", None,
        )

        class PLDDTLocal(modelcif.qa_metric.Local, modelcif.qa_metric.PLDDT):
            """Predicted lDDT-Ca (CA atom pLDDT, 0-100)"""

        class PLDDTGlobal(modelcif.qa_metric.Global, modelcif.qa_metric.PLDDT):
            """Mean predicted lDDT over all atoms (0-100)"""

        class PTMGlobal(modelcif.qa_metric.Global, modelcif.qa_metric.PTM):
            """Predicted TM-score (as ESMFold reports it)"""

        class IPTMGlobal(modelcif.qa_metric.Global, modelcif.qa_metric.IpTM):
            """Interface predicted TM-score (AlphaFold-Multimer's ipTM)"""

        for metric in (PLDDTLocal, PLDDTGlobal, PTMGlobal, IPTMGlobal):
            metric.software = software
        PLDDTLocal.name, PLDDTGlobal.name, PTMGlobal.name, IPTMGlobal.name = "pLDDT", "pLDDT", "pTM", "ipTM"

        system = modelcif.System(title=f"{block} (ESMFold prediction)", id=block)
        system.software.append(software)
        entities: dict[tuple[str, ...], Any] = {}
        asyms = {}
        chain_positions = {}
        for c in np.unique(item.chain):
            sel = np.flatnonzero(item.chain == c)
            chain_positions[c] = sel
            codes = tuple(
                "UNK" if a == rc.unk_restype_index else rc.restypes_with_x[a] for a in item.aatype[sel]
            )
            if codes not in entities:
                entities[codes] = modelcif.Entity(list(codes), alphabet=ihm.LPeptideAlphabet)
            resnum = item.resnum[sel]
            auth = {k + 1: int(r) for k, r in enumerate(resnum)}
            asyms[c] = modelcif.AsymUnit(
                entities[codes], details=f"Model subunit {CHAIN_IDS[c]}", id=CHAIN_IDS[c],
                auth_seq_id_map=0 if all(k == r for k, r in auth.items()) else auth,
            )
        for entity in entities.values():  # a homomer's chains share their entity
            ids = [a.id for a in asyms.values() if a.entity is entity]
            entity.description = ("Chain " if len(ids) == 1 else "Chains ") + ", ".join(ids)
        system.entities.extend(entities.values())
        system.asym_units.extend(asyms.values())
        assembly = modelcif.Assembly(list(asyms.values()), name="Modeled assembly")

        atoms = []
        for c, sel in chain_positions.items():
            for seq_id, j in enumerate(sel, start=1):
                for k in np.flatnonzero(item.atom_mask[j]):
                    atom = rc.atom_types[k]
                    x, y, z = (float(v) for v in item.positions[j, k])
                    atoms.append(
                        modelcif.model.Atom(
                            asym_unit=asyms[c], seq_id=seq_id, atom_id=atom, type_symbol=atom[0],
                            x=x, y=y, z=z, het=False, biso=round(float(item.plddt[j, k]), 2), occupancy=1.0,
                        )
                    )

        class _Model(modelcif.model.AbInitioModel):
            def get_atoms(self, _atoms=atoms):
                return iter(_atoms)

        model = _Model(assembly=assembly, name=f"{block} model")
        for c, sel in chain_positions.items():
            for seq_id, j in enumerate(sel, start=1):
                if item.atom_mask[j].any():
                    value = round(float(item.plddt[j, _CA]), 2)
                    model.qa_metrics.append(PLDDTLocal(asyms[c].residue(seq_id), _finite(value)))
        mean_plddt = _item_value(output["mean_plddt"], i) if "mean_plddt" in output \
            else item.plddt[item.atom_mask].mean()
        model.qa_metrics.append(PLDDTGlobal(_round(mean_plddt)))
        # The CIF writer prints floats with 3 decimals; pTM-like scores keep 4, as in the scores JSON.
        model.qa_metrics.append(PTMGlobal(f"{_round(_item_value(output['ptm'], i), 4):.4f}"))
        if tm is not None and tm["iptm"] is not None:
            model.qa_metrics.append(IPTMGlobal(f"{_round(tm['iptm'], 4):.4f}"))

        group = modelcif.model.ModelGroup([model], name="ESMFold prediction")
        system.model_groups.append(group)
        targets = modelcif.data.DataGroup(list(entities.values()))
        system.protocols.append(modelcif.protocol.Protocol())
        system.protocols[-1].steps.append(
            modelcif.protocol.ModelingStep(input_data=targets, output_data=model, software=software)
        )
        buf = io.StringIO()
        modelcif.dumper.write(buf, [system])
        texts.append(buf.getvalue())
    return texts


def _chain_tm(output: Mapping[str, Any], i: int, item: _Item) -> dict[str, Any] | None:
    """``ptm_no_linker``, ``iptm`` (None for one chain) and ``chain_ptm`` (list, None entries for
    chains without a score) of item ``i``: the model's outputs where present, else computed from
    ``aligned_confidence_probs`` (or ``ptm_logits``) when the output has them, else None."""
    if all(k in output for k in ("ptm_no_linker", "iptm", "chain_ptm")):
        iptm = _item_value(output["iptm"], i)
        chain_ptm = _numpy(output["chain_ptm"])[i]
        ptm_no_linker = _item_value(output["ptm_no_linker"], i)
    else:
        if "aligned_confidence_probs" in output:
            probs = output["aligned_confidence_probs"][i]
        elif "ptm_logits" in output:
            probs = torch.softmax(output["ptm_logits"][i].float(), dim=-1)
        else:
            return None
        from .heads import chain_tm_scores

        probs = torch.as_tensor(probs)
        chain = torch.full((probs.shape[0],), -1, dtype=torch.long)
        chain[torch.as_tensor(item.present)] = torch.as_tensor(item.chain)
        tm = chain_tm_scores(probs.float(), chain.to(probs.device))
        iptm = float(tm["iptm"])
        chain_ptm = _numpy(tm["chain_ptm"])
        ptm_no_linker = float(tm["ptm_no_linker"])
    return {
        "ptm_no_linker": ptm_no_linker if math.isfinite(ptm_no_linker) else None,
        "iptm": iptm if math.isfinite(iptm) else None,
        "chain_ptm": [float(v) if math.isfinite(v) else None for v in chain_ptm],
    }


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


def _round_or_none(value: Any, digits: int = 2) -> float | None:
    return None if value is None else _round(value, digits)


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"non-finite score {value}")
    return value


def _round(value: Any, digits: int = 2) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"non-finite score {value}")
    return round(value, digits)
