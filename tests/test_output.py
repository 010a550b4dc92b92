"""PDB / mmCIF / scores output from a synthetic ``ESMFold.infer`` output dict.

The dict is built the way fair-esm's ``infer`` builds it (multimer chains joined by a poly-G linker,
chain ``i`` offset by ``i * 512`` in ``residue_index``, linker and padding atoms masked out), with
random coordinates (std 15 A) and random pLDDT / PAE. Expected atoms are derived independently from
the atom14 name tables, so the atom14 -> atom37 path is checked, not just echoed.
"""

from __future__ import annotations

import io
import json
import os
import re

import numpy as np
import pytest
import torch
from Bio.PDB import MMCIFParser, PDBParser

from esmfold_fast import residue_constants as rc
from esmfold_fast.heads import chain_scores, predicted_aligned_error
from esmfold_fast.output import (
    CHAIN_IDS,
    atomic_write,
    output_to_mmcif,
    output_to_modelcif,
    output_to_pdbs,
    pae_json,
    scores,
    scores_json,
)
from esmfold_fast.protein import make_atom14_masks

LINKER = "G" * 25
OFFSET = 512
# Item 0: a 3-chain complex with an unknown residue; item 1: one chain, padded; B/Z/U/O read as X.
SEQUENCES = ["MKTAYIAKQRQISFVKS:GWXHC:DEFLLP", "ACDEFGHIKLMNPQRSTVWYBZACDEFGHIK"]


def random_sequences(seed: int) -> list[str]:
    """A fresh batch: 1-4 items of 1-4 chains, odd lengths (17, 37, ...), some X/B/Z/U/O letters."""
    rng = np.random.default_rng(seed)
    letters = np.array(rc.restypes * 3 + list("XBZUO"))
    seqs = []
    for _ in range(rng.integers(1, 5)):
        lengths = rng.choice([1, 17, 37, int(rng.integers(2, 60))], size=rng.integers(1, 5))
        seqs.append(":".join("".join(rng.choice(letters, size=n)) for n in lengths))
    return seqs


def _encode(seq: str):
    """fair-esm's multimer encoding, written out: aatype, residue index, linker mask, chain index."""
    chains = seq.split(":")
    aatype, residx, linker, chain_index = [], [], [], []
    pos = 0
    for c, chain in enumerate(chains):
        part = chain + (LINKER if c < len(chains) - 1 else "")
        for k, letter in enumerate(part):
            aatype.append(rc.restype_order_with_x.get(letter, rc.unk_restype_index))
            residx.append(pos + c * OFFSET)
            linker.append(0.0 if k >= len(chain) else 1.0)
            chain_index.append(c)  # linker residues belong to the chain before them
            pos += 1
    return aatype, residx, linker, chain_index


def synthetic_output(seqs=SEQUENCES, seed=0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    encoded = [_encode(s) for s in seqs]
    B, L = len(seqs), max(len(e[0]) for e in encoded)
    aatype = torch.zeros(B, L, dtype=torch.long)
    residx = torch.zeros(B, L, dtype=torch.long)
    linker = torch.zeros(B, L)
    mask = torch.zeros(B, L)
    chain_index = torch.full((B, L), -1, dtype=torch.long)
    for b, (aa, ri, lk, ci) in enumerate(encoded):
        n = len(aa)
        aatype[b, :n] = torch.tensor(aa)
        residx[b, :n] = torch.tensor(ri)
        linker[b, :n] = torch.tensor(lk)
        mask[b, :n] = 1
        chain_index[b, :n] = torch.tensor(ci)
    out = make_atom14_masks(aatype)
    out["atom37_atom_exists"] = out["atom37_atom_exists"] * (mask * linker)[..., None]
    out["atom14_atom_exists"] = out["atom14_atom_exists"] * mask[..., None]
    exists = out["atom37_atom_exists"]
    plddt = 100 * torch.rand(B, L, 37, generator=gen)
    out.update(
        aatype=aatype,
        residue_index=residx,
        chain_index=chain_index,
        positions=15 * torch.randn(8, B, L, 14, 3, generator=gen),
        plddt=plddt,
        mean_plddt=(plddt * exists).sum((1, 2)) / exists.sum((1, 2)),
        ptm=torch.rand(B, generator=gen),
        predicted_aligned_error=30 * torch.rand(B, L, L, generator=gen),
        max_predicted_aligned_error=torch.full((B,), 31.75),
    )
    return out


def expected_atoms(out: dict, b: int, seq: str) -> dict:
    """(chain id, residue number, atom name) -> (residue name, xyz, pLDDT), from the atom14 tables."""
    expected = {}
    pos = 0
    for c, chain in enumerate(seq.split(":")):
        for k, letter in enumerate(chain):
            resname = rc.restype_1to3.get(letter, "UNK") if letter in rc.restypes else "UNK"
            for a14, name in enumerate(rc.restype_name_to_atom14_names.get(resname, [])):
                if not name:
                    continue
                xyz = out["positions"][-1, b, pos, a14].double().numpy()
                bfac = float(out["plddt"][b, pos, rc.atom_order[name]])
                expected[(CHAIN_IDS[c], k + 1, name)] = (resname, xyz, bfac)
            pos += 1
        pos += len(LINKER)
    return expected


def parsed_atoms(structure) -> dict:
    found = {}
    for atom in structure[0].get_atoms():
        residue = atom.get_parent()
        key = (residue.get_parent().id, residue.id[1], atom.get_id())
        assert key not in found, f"atom written twice: {key}"
        found[key] = (residue.get_resname(), atom.coord.astype(np.float64), atom.bfactor, atom.element)
    return found


def check_atoms(found: dict, expected: dict) -> None:
    assert set(found) == set(expected)
    for key, (resname, xyz, bfac) in expected.items():
        got_name, got_xyz, got_b, element = found[key]
        assert got_name == resname, key
        np.testing.assert_allclose(got_xyz, xyz, atol=6e-4, err_msg=str(key))  # 3 decimals
        assert abs(got_b - bfac) <= 6e-3, key  # 2 decimals
        assert element == key[2][0], key


def _is_known(letter: str) -> bool:
    return letter in rc.restypes  # B/Z/U/O/X are read as X, which has no atoms


@pytest.mark.parametrize("seed", [0, 1, 10, 11, 12, 13])
def test_pdb_round_trips_through_biopython(seed):
    seqs = SEQUENCES if seed < 10 else random_sequences(seed)
    out = synthetic_output(seqs, seed=seed)
    pdbs = output_to_pdbs(out)
    assert len(pdbs) == len(seqs)
    for b, (pdb, seq) in enumerate(zip(pdbs, seqs)):
        structure = PDBParser(QUIET=True).get_structure(f"item{b}", io.StringIO(pdb))
        expected = expected_atoms(out, b, seq)
        check_atoms(parsed_atoms(structure), expected)
        # The linker is gone and numbering restarts at 1 per chain: chain lengths match the input
        # (an X residue has no atoms, so it leaves a gap instead of a residue; an all-X chain is absent).
        chains = enumerate(seq.split(":"))
        written = [(CHAIN_IDS[c], chain) for c, chain in chains if any(map(_is_known, chain))]
        assert [c.id for c in structure[0]] == [chain_id for chain_id, _ in written]
        for chain_id, chain in written:
            residues = list(structure[0][chain_id])
            numbers = [k + 1 for k, letter in enumerate(chain) if _is_known(letter)]
            assert [r.id[1] for r in residues] == numbers
            for r in residues:  # atoms in atom37 order, AlphaFold's
                names = [a.get_id() for a in r]
                assert names == sorted(names, key=rc.atom_order.__getitem__), (chain_id, r.id)
        assert len(expected) == sum(1 for ln in pdb.splitlines() if ln.startswith("ATOM"))


@pytest.mark.parametrize("seed", [20, 21])
def test_pdb_columns_hold_the_model_values(seed):
    """Coordinates and pLDDT are the model's values rounded in their columns, to the last digit."""
    seqs = random_sequences(seed)
    out = synthetic_output(seqs, seed=seed)
    for b, (pdb, seq) in enumerate(zip(output_to_pdbs(out), seqs)):
        expected = expected_atoms(out, b, seq)
        atoms = [ln for ln in pdb.splitlines() if ln.startswith("ATOM")]
        assert len(atoms) == len(expected)
        for ln in atoms:
            resname, xyz, bfac = expected[(ln[21], int(ln[22:26]), ln[12:16].strip())]
            assert ln[17:20] == resname
            assert ln[30:54] == "".join(f"{v:8.3f}" for v in xyz)
            assert ln[60:66] == f"{bfac:6.2f}"


def test_pdb_fixed_columns():
    out = synthetic_output(seed=2)
    pdb = output_to_pdbs(out)[0]
    lines = pdb.splitlines()
    assert lines[-1].rstrip() == "END"  # PDBIO writes the record name padded to 6 columns
    assert not any(ln.startswith(("MODEL", "ENDMDL", "HEADER", "HETATM")) for ln in lines)
    atoms = [ln for ln in lines if ln.startswith("ATOM")]
    ters = [ln for ln in lines if ln.startswith("TER")]
    assert len(ters) == SEQUENCES[0].count(":") + 1
    serials = [int(ln[6:11]) for ln in lines if ln.startswith(("ATOM", "TER"))]
    assert serials == list(range(1, len(serials) + 1))
    for ln in atoms:
        assert len(ln) == 80
        name = ln[12:16].strip()
        assert ln[76:78].strip() == name[0]  # element column
        assert re.fullmatch(r"[ \d]{2}\d\.\d\d", ln[60:66])  # pLDDT as {:>6.2f}
        assert 0.0 <= float(ln[60:66]) <= 100.0
        assert ln[54:60] == "  1.00"
    # TER closes each chain on its last residue.
    for ter in ters:
        chain_id, resseq = ter[21], int(ter[22:26])
        last = [ln for ln in atoms if ln[21] == chain_id][-1]
        assert int(last[22:26]) == resseq and last[17:20] == ter[17:20]


@pytest.mark.parametrize("seed", [3, 30])
def test_mmcif_matches_pdb(seed):
    seqs = SEQUENCES if seed < 10 else random_sequences(seed)
    out = synthetic_output(seqs, seed=seed)
    for b, (cif, pdb, seq) in enumerate(zip(output_to_mmcif(out), output_to_pdbs(out), seqs)):
        structure = MMCIFParser(QUIET=True).get_structure(f"item{b}", io.StringIO(cif))
        found = parsed_atoms(structure)
        check_atoms(found, expected_atoms(out, b, seq))
        from_pdb = parsed_atoms(PDBParser(QUIET=True).get_structure(f"item{b}", io.StringIO(pdb)))
        assert list(found) == list(from_pdb)  # same atoms in the same order


def _long_monomer(length: int, letter: str = "W") -> dict:
    """A minimal one-item output (what :func:`output_to_pdbs` reads) for the PDB size limits."""
    aatype = torch.full((1, length), rc.restype_order[letter], dtype=torch.long)
    out = make_atom14_masks(aatype)
    out.update(
        aatype=aatype,
        residue_index=torch.arange(length)[None],
        positions=torch.randn(1, 1, length, 14, 3),
        plddt=100 * torch.rand(1, length, 37),
    )
    return out


def test_pdb_limits_point_to_mmcif():
    out = _long_monomer(7143)  # 7143 W x 14 atoms + 1 TER = 100003 serials
    with pytest.raises(ValueError, match=r"5-digit serial.*mmCIF"):
        output_to_pdbs(out)
    assert len(output_to_pdbs(_long_monomer(7142))[0].splitlines()) == 7142 * 14 + 2  # ATOMs, TER, END
    out = _long_monomer(30)
    out["residue_index"] = out["residue_index"] * 400  # residue 29 is numbered 11601
    with pytest.raises(ValueError, match=r"over 9999.*mmCIF"):
        output_to_pdbs(out)
    out = synthetic_output([":".join("A" * (len(CHAIN_IDS) + 1))])
    with pytest.raises(ValueError, match="chain ids"):
        output_to_pdbs(out)


def test_scores_cover_real_residues_only():
    out = synthetic_output(seed=4)
    for b, seq in enumerate(SEQUENCES):
        s = scores(out, b)
        json.dumps(s, allow_nan=False)  # plain JSON types only
        chains = seq.split(":")
        n = sum(len(c) for c in chains)
        # Real residues: every chain residue (X included), no linker, no padding.
        real = []
        pos = 0
        for chain in chains:
            real.extend(range(pos, pos + len(chain)))
            pos += len(chain) + len(LINKER)
        assert len(s["plddt"]) == n and s["plddt_kind"] == "CA atom"
        np.testing.assert_allclose(s["plddt"], out["plddt"][b, real, rc.atom_order["CA"]].numpy(), atol=5e-3)
        pae = np.asarray(s["pae"])
        assert pae.shape == (n, n)
        full_pae = out["predicted_aligned_error"][b].numpy()
        np.testing.assert_allclose(pae, full_pae[np.ix_(real, real)], atol=5e-3)
        assert s["chain_ids"] == [c for i, chain in enumerate(chains) for c in "ABC"[i] * len(chain)]
        assert s["residue_numbers"] == [k + 1 for chain in chains for k in range(len(chain))]
        as_x = "".join(ch if ch in rc.restypes or ch == ":" else "X" for ch in seq)
        assert s["sequence"] == as_x
        assert [c["id"] for c in s["chains"]] == list("ABC"[: len(chains)])
        assert s["mean_plddt"] == pytest.approx(float(out["mean_plddt"][b]), abs=5e-3)
        assert s["ptm"] == pytest.approx(float(out["ptm"][b]), abs=5e-5)
        assert s["max_pae"] == 31.75
    text = scores_json(out, 1, id="rec")
    parsed = json.loads(text)
    assert parsed["id"] == "rec" and parsed["sequence"] == scores(out, 1)["sequence"]


def test_non_finite_coordinates_are_refused():
    out = synthetic_output(seed=5)
    out["positions"][-1, 1, 3, 1] = float("nan")  # a CA atom of item 1
    with pytest.raises(ValueError, match="NaN"):
        output_to_pdbs(out)


def test_atomic_write_replaces_or_leaves_old_file(tmp_path, monkeypatch):
    target = tmp_path / "x.pdb"
    atomic_write(target, "first\n")
    atomic_write(target, b"second\n")
    assert target.read_text() == "second\n"
    assert os.stat(target).st_mode & 0o777 == 0o644

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        atomic_write(target, "third\n")
    assert target.read_text() == "second\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pdb"]  # no temporary file left


# ---------------------------------------------------------------------------------------------------
# chain-aware scores, AFDB PAE JSON, ModelCIF, plots
# ---------------------------------------------------------------------------------------------------


def real_positions(seq: str) -> list[int]:
    """Positions (in the folded length) of the chain residues: every residue but the linker."""
    real, pos = [], 0
    for chain in seq.split(":"):
        real.extend(range(pos, pos + len(chain)))
        pos += len(chain) + len(LINKER)
    return real


def with_probs(out: dict, seed: int = 0) -> dict:
    """``out`` with pTM logits' probabilities and the PAE they give, as ``infer`` returns them."""
    gen = torch.Generator().manual_seed(seed)
    b, length = out["aatype"].shape
    logits = 3 * torch.randn(b, length, length, 64, generator=gen)
    out = dict(out)
    out.update(predicted_aligned_error(logits))
    return out


def with_model_chain_scores(out: dict) -> dict:
    """``out`` with the chain scores ``ESMFold.infer`` adds (computed the way its heads do)."""
    out = dict(out)
    chain = out["chain_index"].masked_fill(out["atom37_atom_exists"].sum(-1) == 0, -1)
    chain = torch.where((out["aatype"] == rc.unk_restype_index) & (out["chain_index"] >= 0),
                        out["chain_index"], chain)  # X residues are real too
    out.update(chain_scores(out["aligned_confidence_probs"], chain, out["plddt"], out["atom37_atom_exists"]))
    return out


def test_scores_report_chain_confidence():
    base = with_probs(synthetic_output(seed=6), seed=6)
    model = with_model_chain_scores(base)
    for b, seq in enumerate(SEQUENCES):
        from_model = scores(model, b)
        fallback = scores(base, b)  # no model keys: computed from the probabilities
        json.dumps(from_model, allow_nan=False)
        n_chains = seq.count(":") + 1
        if n_chains > 1:
            assert from_model["iptm"] == pytest.approx(float(model["iptm"][b]), abs=5e-5)
            assert 0 < from_model["iptm"] <= 1
        else:
            assert from_model["iptm"] is None  # monomers: no interface
        assert from_model["ptm_no_linker"] == pytest.approx(float(model["ptm_no_linker"][b]), abs=5e-5)
        assert from_model["ptm"] == pytest.approx(float(model["ptm"][b]), abs=5e-5)  # the model's, unchanged
        for key in ("iptm", "ptm_no_linker", "chains"):
            assert fallback[key] == from_model[key], key
        exists = model["atom37_atom_exists"][b] > 0
        for c, chain in enumerate(from_model["chains"]):
            assert chain["ptm"] == pytest.approx(float(model["chain_ptm"][b, c]), abs=5e-5)
            sel = (model["chain_index"][b] == c)[:, None] & exists
            assert chain["plddt"] == pytest.approx(float(model["plddt"][b][sel].mean()), abs=5e-3)
    # Without the scores or the probabilities (forward without chain_index): null, never NaN.
    bare = scores(synthetic_output(seed=6), 0)
    assert bare["iptm"] is None and bare["ptm_no_linker"] is None
    assert all(ch["ptm"] is None for ch in bare["chains"])
    # An all-X chain has no atoms: its pLDDT is null.
    out = with_model_chain_scores(with_probs(synthetic_output(["ACDEFGH:XXXX"], seed=7)))
    s = json.loads(scores_json(out, 0))
    assert s["chains"][1]["plddt"] is None and s["chains"][1]["ptm"] is not None
    assert s["iptm"] is not None


def test_pae_json_is_afdb_layout():
    out = synthetic_output(seed=8)
    for b, seq in enumerate(SEQUENCES):
        body = json.loads(pae_json(out, b))
        assert isinstance(body, list) and len(body) == 1
        assert set(body[0]) == {"predicted_aligned_error", "max_predicted_aligned_error"}
        pae = body[0]["predicted_aligned_error"]
        real = real_positions(seq)
        assert isinstance(pae, list) and all(isinstance(row, list) and len(row) == len(real) for row in pae)
        assert len(pae) == len(real)
        want = out["predicted_aligned_error"][b].double().numpy()[np.ix_(real, real)]
        np.testing.assert_allclose(np.asarray(pae), want, atol=5e-3 + 1e-9)
        assert np.array_equal(np.asarray(pae), np.round(want, 2))
        assert body[0]["max_predicted_aligned_error"] == 31.75


def _qa_tables(cif_text: str):
    from Bio.PDB.MMCIF2Dict import MMCIF2Dict

    d = MMCIF2Dict(io.StringIO(cif_text))
    metrics = dict(zip(d["_ma_qa_metric.id"], zip(d["_ma_qa_metric.name"], d["_ma_qa_metric.mode"])))
    global_ = {
        metrics[m][0]: float(v)
        for m, v in zip(d["_ma_qa_metric_global.metric_id"], d["_ma_qa_metric_global.metric_value"])
    }
    local = [
        (a, int(s), float(v))
        for a, s, m, v in zip(
            d["_ma_qa_metric_local.label_asym_id"], d["_ma_qa_metric_local.label_seq_id"],
            d["_ma_qa_metric_local.metric_id"], d["_ma_qa_metric_local.metric_value"],
        )
        if metrics[m] == ("pLDDT", "local")
    ]
    return d, global_, local


@pytest.mark.parametrize("seed", [9, 40])
def test_modelcif_round_trips(seed):
    pytest.importorskip("modelcif")
    seqs = SEQUENCES + ["MKLV:MKLV"] if seed < 10 else random_sequences(seed)
    out = with_model_chain_scores(with_probs(synthetic_output(seqs, seed=seed), seed=seed))
    cifs = output_to_modelcif(out, name="rec one")
    assert len(cifs) == len(seqs)
    assert output_to_modelcif(out, name="rec one", items=[len(seqs) - 1]) == cifs[-1:]
    for b, (cif, pdb, seq) in enumerate(zip(cifs, output_to_pdbs(out), seqs)):
        assert cif.startswith("data_rec_one\n")
        structure = MMCIFParser(QUIET=True).get_structure(f"item{b}", io.StringIO(cif))
        from_pdb_structure = PDBParser(QUIET=True).get_structure(f"item{b}", io.StringIO(pdb))
        found, from_pdb = parsed_atoms(structure), parsed_atoms(from_pdb_structure)
        assert list(found) == list(from_pdb)  # same atoms, ids, numbering and order
        for key, (name, xyz, bfac, element) in found.items():
            assert from_pdb[key][0] == name and from_pdb[key][3] == element
            np.testing.assert_array_equal(xyz, from_pdb[key][1])
            assert bfac == pytest.approx(from_pdb[key][2], abs=1e-9)
        assert len(structure[0]) == len(from_pdb_structure[0])
        d, global_, local = _qa_tables(cif)
        chains = seq.split(":")
        assert len(d["_struct_asym.id"]) == len(chains)  # an all-X chain has an asym unit, no atoms
        as_x = {"".join(ch if ch in rc.restypes else "X" for ch in chain) for chain in chains}
        assert len(d["_entity.id"]) == len(as_x)  # identical chains (as the model reads them) share one
        # Local pLDDT: one per residue with atoms, the CA atom's pLDDT (= its B-factor in the PDB).
        ca = [
            (chain.id, res.id[1], res["CA"].bfactor)
            for chain in from_pdb_structure[0] for res in chain
        ]
        assert [(a, s) for a, s, _ in local] == [(a, s) for a, s, _ in ca]
        np.testing.assert_allclose([v for *_, v in local], [v for *_, v in ca], atol=1e-9)
        assert global_["pLDDT"] == pytest.approx(float(out["mean_plddt"][b]), abs=5e-3)
        assert global_["pTM"] == pytest.approx(float(out["ptm"][b]), abs=5e-5)
        if len(chains) > 1:
            assert global_["ipTM"] == pytest.approx(float(out["iptm"][b]), abs=5e-5)
        else:
            assert "ipTM" not in global_


def test_modelcif_homomer_shares_entity_and_gemmi_reads_it():
    pytest.importorskip("modelcif")
    out = with_model_chain_scores(with_probs(synthetic_output(["MKLVW:MKLVW:GHC"], seed=11)))
    cif = output_to_modelcif(out)[0]
    d, _, _ = _qa_tables(cif)
    assert d["_entity.id"] == ["1", "2"] and d["_struct_asym.entity_id"] == ["1", "1", "2"]
    gemmi = pytest.importorskip("gemmi")
    structure = gemmi.make_structure_from_block(gemmi.cif.read_string(cif).sole_block())
    pdb = PDBParser(QUIET=True).get_structure("x", io.StringIO(output_to_pdbs(out)[0]))
    assert [ch.name for ch in structure[0]] == [ch.id for ch in pdb[0]]
    ours = [(ch.name, r.seqid.num, a.name, a.pos.x, a.b_iso) for ch in structure[0] for r in ch for a in r]
    theirs = [(ch.id, r.id[1], a.get_id(), float(a.coord[0]), float(a.bfactor))
              for ch in pdb[0] for r in ch for a in r]
    assert [o[:3] for o in ours] == [t[:3] for t in theirs]
    np.testing.assert_allclose([o[3:] for o in ours], [t[3:] for t in theirs], atol=1e-4)


def test_modelcif_missing_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "modelcif", None)
    with pytest.raises(ImportError, match=r"pip install 'esmfold-fast\[cif\]'"):
        output_to_modelcif(synthetic_output(seed=12))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    from esmfold_fast.plots import save_plots

    out = synthetic_output(seed=13)
    for b in range(len(SEQUENCES)):
        plddt_png, pae_png = tmp_path / f"{b}_plddt.png", tmp_path / f"{b}_pae.png"
        save_plots(out, b, plddt_png, pae_png, title=f"item {b}")
        for path in (plddt_png, pae_png):
            data = path.read_bytes()
            assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
            image = matplotlib.image.imread(path)
            assert image.ndim == 3 and min(image.shape[:2]) > 100
    from esmfold_fast.plots import plot_pngs

    assert all(png.startswith(PNG_SIGNATURE) for png in plot_pngs(out, 1, title="x"))
    save_plots(out, 0, None, tmp_path / "only_pae.png")
    assert sorted(p.name for p in tmp_path.iterdir())[-1] == "only_pae.png"


def test_plots_missing_matplotlib_says_how_to_install(monkeypatch, tmp_path):
    import sys

    from esmfold_fast.plots import save_plots

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'esmfold-fast\[plot\]'"):
        save_plots(synthetic_output(seed=14), 0, tmp_path / "a.png", None)
    assert not list(tmp_path.iterdir())
