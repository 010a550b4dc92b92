"""FASTA validation and the ``esmfold-fast`` command line, end to end on a tiny random checkpoint.

The checkpoint is a randomised transformers ``EsmForProteinFolding`` (2-layer LM, one trunk block)
written with ``save_pretrained``: the official directory layout, nothing downloaded.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from Bio.PDB import MMCIFParser, PDBParser

from esmfold_fast.cli import main
from esmfold_fast.fasta import FastaError, read_fasta, safe_id
from _util import randomize_

ERROR_PREFIX = "esmfold-fast: error: "
MONOMER = "MKTAYIAKQRQISFVKSHFSRQ"  # 22 residues
CHAIN_A, CHAIN_B = "GSHMLEDPVRAK", "TTPWQELW"  # a 2-chain complex, 12 + 8 residues


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A randomised tiny ``EsmForProteinFolding`` saved in the transformers layout."""
    from transformers import EsmConfig, EsmForProteinFolding
    from transformers.models.esm.configuration_esm import get_default_vocab_list

    config = EsmConfig(
        vocab_size=33, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        pad_token_id=1, mask_token_id=32, position_embedding_type="rotary", token_dropout=True,
        is_folding_model=True, vocab_list=list(get_default_vocab_list()),
        esmfold_config={
            "fp16_esm": False,
            "lddt_head_hid_dim": 16,
            "trunk": {
                "num_blocks": 1, "sequence_state_dim": 32, "pairwise_state_dim": 16,
                "sequence_head_width": 16, "pairwise_head_width": 16, "max_recycles": 1,
                "structure_module": {
                    "sequence_dim": 16, "pairwise_dim": 16, "num_blocks": 2, "resnet_dim": 16,
                    "num_heads_ipa": 2, "ipa_dim": 8, "num_qk_points": 2, "num_v_points": 2,
                },
            },
        },
    )
    torch.manual_seed(0)
    model = randomize_(EsmForProteinFolding(config).eval(), seed=7)
    path = tmp_path_factory.mktemp("tiny_esmfold")
    model.save_pretrained(path)
    return path


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    return code, captured.err


def error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith(ERROR_PREFIX)]


# --------------------------------------------------------------------------- read_fasta


def test_read_fasta_normalises_records(tmp_path):
    fasta = write(
        tmp_path / "in.fa",
        ">sp|P1|ONE first protein\nmkta\nYIAK*\n\n>../../etc/passwd\nACDE:FGHI\n>\nXBZUO\n",
    )
    contents = read_fasta(fasta)
    assert contents.errors == []
    assert [r.id for r in contents.records] == ["sp_P1_ONE", "etc_passwd", "record_3"]
    assert [r.sequence for r in contents.records] == ["MKTAYIAK", "ACDE:FGHI", "XBZUO"]
    assert contents.records[0].header == "sp|P1|ONE first protein"
    assert contents.records[1].chains == ["ACDE", "FGHI"] and contents.records[1].num_residues == 8
    for raw in ("a/b", "..", ".hidden", "x\\y", "a b", "é", "a" * 500):
        stem = safe_id(raw, 9)
        assert stem and "/" not in stem and "\\" not in stem and not stem.startswith(".")
        assert len(stem) <= 200


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ("", "empty file"),
        ("\n  \n", "empty file"),
        (b">a\nAC\x00DE\n", "binary file"),
        (b">a\nAC\xff\xfeDE\n", "not UTF-8"),
        ("ACDEFGHIK\n", "no FASTA header"),
        ("some notes\n>a\nACDE\n", "text before the first '>'"),
    ],
)
def test_read_fasta_file_errors(tmp_path, content, message):
    path = tmp_path / "in.fa"
    if content is not None:
        write(path, content)
    with pytest.raises(FastaError) as info:
        read_fasta(path)
    text = str(info.value)
    assert message in text and str(path) in text and "\n" not in text


def test_read_fasta_directory_and_unreadable(tmp_path, monkeypatch):
    with pytest.raises(FastaError, match="is a directory"):
        read_fasta(tmp_path)
    path = write(tmp_path / "in.fa", ">a\nAC\n")

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)  # root ignores chmod, so fake the refusal
    with pytest.raises(FastaError, match="cannot read .Permission denied"):
        read_fasta(path)


def test_read_fasta_record_errors_keep_good_records(tmp_path):
    fasta = write(
        tmp_path / "in.fa",
        ">good1\nACDEFG\n>empty\n\n>badletters\nAC-DJ1\n>good2\nMKV*\n>good1\nAAAA\n>GOOD2\nCC\n"
        ">long\n" + "A" * 11 + ":" + "C" * 10 + "\n>gap\nACD::EF\n>stars\nAC**\n",
    )
    contents = read_fasta(fasta, max_length=20)
    assert [r.id for r in contents.records] == ["good1", "good2"]
    assert [r.sequence for r in contents.records] == ["ACDEFG", "MKV"]
    messages = [e.message for e in contents.errors]
    expected = [
        (2, "empty", "empty sequence"),
        (3, "badletters", "invalid letters '-1J' at position 3, 5, 6"),
        (5, "good1", "duplicate id (same as record 1)"),
        (6, "GOOD2", "same output name 'GOOD2' as record 4 'good2'"),
        (7, "long", "21 residues exceed the limit of 20"),
        (8, "gap", "empty chain"),
        (9, "stars", "invalid letters '*'"),
    ]
    assert len(messages) == len(expected)
    for message, (index, rid, what) in zip(messages, expected):
        assert message.startswith(f"{fasta}: record {index} '{rid}': ")
        assert what in message and "\n" not in message


# --------------------------------------------------------------------------- command line


def test_help_and_usage_errors(capsys):
    assert main(["--help"]) == 0
    assert "fold" in capsys.readouterr().out
    assert main(["fold", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "--max-length" in help_text and "2700" in help_text and "summed over" in help_text
    for argv in (
        [],
        ["fold", "x.fa", "--model", "m"],  # no -o
        ["fold", "x.fa", "-o", "out", "--model", "m", "--dtype", "int8"],
        ["fold", "x.fa", "-o", "out", "--model", "m", "--num-recycles", "-1"],
        ["fold", "x.fa", "-o", "out", "--model", "m", "--chunk-size", "0"],
        ["fold", "x.fa", "-o", "out", "--model", "m", "--format", "xyz"],
    ):
        assert main(argv) == 2, argv
        assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ("", "empty file"),
        (b"\x7fELF\x00\x01\x02", "binary file"),
        ("MKTAYIAK\n", "no FASTA header"),
    ],
)
def test_file_errors_exit_2_before_anything_is_written(tmp_path, capsys, content, message):
    fasta = tmp_path / "in.fa"
    if content is not None:
        write(fasta, content)
    outdir = tmp_path / "out"
    code, err = run_cli(capsys, "fold", fasta, "-o", outdir, "--model", tmp_path / "no_model")
    assert code == 2
    errors = error_lines(err)
    assert len(errors) == 1 and message in errors[0] and str(fasta) in errors[0]
    assert not outdir.exists()


def test_model_errors_are_one_line_naming_the_path(tmp_path, capsys):
    fasta = write(tmp_path / "in.fa", f">a\n{MONOMER}\n")
    missing = tmp_path / "missing_model"
    code, err = run_cli(capsys, "fold", fasta, "-o", tmp_path / "out", "--model", missing)
    assert code == 2
    assert error_lines(err) == [f"{ERROR_PREFIX}{missing}: no such model file or directory (--model)"]

    # Not a path: looked up in the local model caches, never downloaded.
    code, err = run_cli(capsys, "fold", fasta, "-o", tmp_path / "out", "--model", "no_such_cached_model")
    assert code == 2
    errors = error_lines(err)
    assert len(errors) == 1 and "no_such_cached_model" in errors[0] and "cache" in errors[0]

    broken = tmp_path / "broken_model"
    broken.mkdir()
    write(broken / "config.json", "{not json")
    write(broken / "model.safetensors", b"\x00" * 64)
    code, err = run_cli(capsys, "fold", fasta, "-o", tmp_path / "out2", "--model", broken)
    assert code == 2
    errors = error_lines(err)
    assert len(errors) == 1 and str(broken) in errors[0], err
    assert not any((tmp_path / "out2").iterdir())


def test_fold_end_to_end(tiny_model, tmp_path, capsys):
    fasta = write(tmp_path / "in.fa", f">mono one chain\n{MONOMER}\n>complex|AB\n{CHAIN_A}:{CHAIN_B}\n")
    outdir = tmp_path / "out"
    code, err = run_cli(
        capsys, "fold", fasta, "-o", outdir, "--model", tiny_model, "--format", "both",
        "--num-recycles", "1", "--dtype", "fp32", "--device", "cpu", "--chunk-size", "4",
    )
    assert code == 0, err
    assert error_lines(err) == []
    assert "[1/2] mono" in err and "[2/2] complex_AB" in err
    assert err.strip().splitlines()[-1].startswith("esmfold-fast: folded 2 of 2 records")
    assert sorted(p.name for p in outdir.iterdir()) == sorted(
        [f"{stem}{suffix}" for stem in ("mono", "complex_AB")
         for suffix in (".pdb", ".cif", ".scores.json", ".pae.json", ".fold.done")] + ["summary.tsv", "fold.log"]
    )
    for stem, chains in (("mono", [MONOMER]), ("complex_AB", [CHAIN_A, CHAIN_B])):
        pdb = PDBParser(QUIET=True).get_structure(stem, str(outdir / f"{stem}.pdb"))[0]
        cif = MMCIFParser(QUIET=True).get_structure(stem, str(outdir / f"{stem}.cif"))[0]
        assert [c.id for c in pdb] == list("AB"[: len(chains)])
        for chain_id, seq in zip("AB", chains):
            residues = list(pdb[chain_id])
            assert [r.id[1] for r in residues] == list(range(1, len(seq) + 1))  # linker gone
            assert [r.get_resname() for r in residues] == [_three(a) for a in seq]
            assert all(len(r) >= 4 for r in residues)  # N, CA, C, O at least
        pdb_xyz = np.array([a.coord for a in pdb.get_atoms()])
        cif_xyz = np.array([a.coord for a in cif.get_atoms()])
        np.testing.assert_allclose(cif_xyz, pdb_xyz, atol=1e-3)
        assert np.isfinite(pdb_xyz).all() and pdb_xyz.std() > 0.5  # a real, non-degenerate fold
        bfactors = np.array([a.bfactor for a in pdb.get_atoms()])
        assert (bfactors >= 0).all() and (bfactors <= 100).all() and bfactors.std() > 0

        s = json.loads((outdir / f"{stem}.scores.json").read_text())
        n = sum(len(c) for c in chains)
        assert s["id"] == stem and s["sequence"] == ":".join(chains)
        assert len(s["plddt"]) == n and np.asarray(s["pae"]).shape == (n, n)
        assert s["chain_ids"] == [c for c, seq in zip("AB", chains) for _ in seq]
        assert 0 <= s["mean_plddt"] <= 100 and 0 <= s["ptm"] <= 1
        ca_b = [pdb[c][r]["CA"].bfactor for c, r in zip(s["chain_ids"], s["residue_numbers"])]
        np.testing.assert_allclose(s["plddt"], ca_b, atol=0.011)


def test_fold_matches_transformers_pdb(tiny_model, tmp_path, capsys):
    """Same checkpoint, same recycling: our PDB has the atoms and coordinates of transformers' writer."""
    from transformers import EsmForProteinFolding

    from esmfold_fast import residue_constants as rc

    fasta = write(tmp_path / "in.fa", f">mono\n{MONOMER}\n")
    code, err = run_cli(capsys, "fold", fasta, "-o", tmp_path / "out", "--model", tiny_model,
                        "--num-recycles", "1", "--device", "cpu")
    assert code == 0, err
    peer = EsmForProteinFolding.from_pretrained(tiny_model).eval()
    aatype = torch.tensor([[rc.restype_order_with_x[a] for a in MONOMER]])
    with torch.no_grad():
        peer_pdb = peer.output_to_pdb(peer(aatype, torch.ones_like(aatype), num_recycles=1))[0]

    def atoms(structure):
        return {
            (a.get_parent().get_parent().id, a.get_parent().id[1], a.get_parent().get_resname(), a.get_id()):
            (a.coord.astype(np.float64), a.bfactor)
            for a in structure.get_atoms()
        }

    ours = atoms(PDBParser(QUIET=True).get_structure("ours", str(tmp_path / "out" / "mono.pdb")))
    theirs = atoms(PDBParser(QUIET=True).get_structure("peer", io.StringIO(peer_pdb)))
    assert set(ours) == set(theirs)
    for key, (xyz, bfactor) in ours.items():
        np.testing.assert_allclose(xyz, theirs[key][0], atol=2e-3, err_msg=str(key))  # 3-decimal columns
        assert abs(bfactor - 100 * theirs[key][1]) <= 0.51  # transformers writes pLDDT on 0-1, 2 decimals


def test_bad_records_are_reported_and_good_ones_folded(tiny_model, tmp_path, capsys):
    fasta = write(
        tmp_path / "in.fa",
        f">ok1\n{MONOMER}\n>bad letters\nACDJ\n>empty\n>ok1\n{CHAIN_A}\n>too_long\n{'A' * 30}\n"
        f">../escape\n{CHAIN_A}:{CHAIN_B}\n",
    )
    outdir = tmp_path / "out"
    code, err = run_cli(capsys, "fold", fasta, "-o", outdir, "--model", tiny_model, "--max-length", "25")
    assert code == 1
    errors = error_lines(err)
    assert len(errors) == 4, err
    for line, (index, rid) in zip(errors, [(2, "bad"), (3, "empty"), (4, "ok1"), (5, "too_long")]):
        assert line.startswith(f"{ERROR_PREFIX}{fasta}: record {index} '{rid}': ")
    assert "folded 2, failed 4 of 6 records" in err
    assert sorted(p.name for p in outdir.iterdir()) == sorted(
        [f"{stem}{suffix}" for stem in ("ok1", "escape") for suffix in (".pdb", ".scores.json", ".pae.json",
                                                                          ".fold.done")]
        + ["summary.tsv", "fold.log"]
    )
    assert not list(tmp_path.glob("escape*"))  # the id cannot climb out of OUTDIR


def test_fold_failure_of_one_record_keeps_the_others(tiny_model, tmp_path, capsys, monkeypatch):
    from esmfold_fast import output as output_module
    from esmfold_fast.esmfold import ESMFold

    real_infer, real_scores_json = ESMFold.infer, output_module.scores_json

    def flaky_infer(self, sequences, *args, **kwargs):
        if sequences == [CHAIN_A]:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
        return real_infer(self, sequences, *args, **kwargs)

    def flaky_scores_json(output, i, **extra):
        if extra.get("id") == "second":  # fails after the structure text was made, before any write
            raise ValueError("non-finite score nan")
        return real_scores_json(output, i, **extra)

    monkeypatch.setattr(ESMFold, "infer", flaky_infer)
    monkeypatch.setattr(output_module, "scores_json", flaky_scores_json)
    fasta = write(tmp_path / "in.fa", f">first\n{CHAIN_A}\n>second\n{CHAIN_B}\n>third\n{MONOMER}\n")
    outdir = tmp_path / "out"
    code, err = run_cli(capsys, "fold", fasta, "-o", outdir, "--model", tiny_model, "--format", "both",
                        "--max-tokens-per-batch", "0")
    assert code == 1
    errors = error_lines(err)
    assert len(errors) == 2
    # Records run shortest first: 'second' (8 residues), 'first' (12), 'third' (22).
    assert errors[0] == f"{ERROR_PREFIX}{fasta}: record 2 'second': writing outputs failed: non-finite score nan"
    assert errors[1] == (
        f"{ERROR_PREFIX}{fasta}: record 1 'first': out of memory at 12 tokens even with chunk size 16 (an "
        "allocation of 2.00 GiB failed); try a lower-precision --dtype, a larger device or a shorter sequence"
    )
    assert sorted(p.name for p in outdir.iterdir() if p.name.startswith(("first", "second", "third"))) == [
        "third.cif", "third.fold.done", "third.pae.json", "third.pdb", "third.scores.json"
    ]


def test_triton_errors_fail_only_their_record(tiny_model, tmp_path, capsys, monkeypatch):
    """Triton's exceptions are not RuntimeError: each fails its own record (one line, a hint), exit 1."""
    import ast

    triton_errors = pytest.importorskip("triton.runtime.errors")
    compiler_errors = pytest.importorskip("triton.compiler.errors")
    from esmfold_fast.esmfold import ESMFold

    src = "def kernel(x):\n    tl.bogus(x)\n"
    raised = {
        CHAIN_A: triton_errors.OutOfResources(232448, 101376, "shared memory"),
        CHAIN_B: compiler_errors.CompilationError(src, ast.parse(src).body[0].body[0], "bogus is not defined"),
        "ACDEFG": KeyError("a bug"),
    }
    real_infer = ESMFold.infer

    def failing_infer(self, sequences, *args, **kwargs):
        if sequences[0] in raised:
            raise raised[sequences[0]]
        return real_infer(self, sequences, *args, **kwargs)

    monkeypatch.setattr(ESMFold, "infer", failing_infer)
    fasta = write(tmp_path / "in.fa", f">oor\n{CHAIN_A}\n>compile\n{CHAIN_B}\n>good\n{MONOMER}\n")
    outdir = tmp_path / "out"
    code, err = run_cli(capsys, "fold", fasta, "-o", outdir, "--model", tiny_model)
    assert code == 1
    errors = error_lines(err)
    assert errors == [  # the batch failed, then each record alone; shortest first
        f"{ERROR_PREFIX}{fasta}: record 2 'compile': folding failed: Triton kernel failed to compile "
        "(CompilationError: bogus is not defined); try --backend torch",
        f"{ERROR_PREFIX}{fasta}: record 1 'oor': folding failed: Triton kernel out of resources (out of resource: "
        "shared memory, Required: 232448, Hardware limit: 101376); try a smaller --chunk-size, another --dtype "
        "or --backend torch",
    ], err
    assert "folded 1, failed 2 of 3 records" in err
    assert sorted(p.name for p in outdir.iterdir() if p.suffix not in (".tsv", ".log")) == [
        "good.fold.done", "good.pae.json", "good.pdb", "good.scores.json"
    ]

    # Any other exception is a bug: it still stops the run as an internal error (exit 2).
    fasta = write(tmp_path / "bug.fa", f">bug\nACDEFG\n>good\n{MONOMER}\n")
    code, err = run_cli(capsys, "fold", fasta, "-o", tmp_path / "out2", "--model", tiny_model)
    assert code == 2
    assert error_lines(err) == [f"{ERROR_PREFIX}internal error (KeyError: 'a bug'); rerun with --traceback for details"]


def test_triton_errors_are_looked_up_only_with_triton(monkeypatch):
    import fastfold_kernels

    from esmfold_fast import cli

    monkeypatch.setattr(fastfold_kernels, "HAVE_TRITON", False)
    assert cli._triton_errors() == ()
    if importlib.util.find_spec("triton") is not None:
        monkeypatch.setattr(fastfold_kernels, "HAVE_TRITON", True)
        import triton.errors

        assert triton.errors.TritonError in cli._triton_errors()


def test_lean_outputs_drop_only_pair_outputs_and_cli_files_are_unchanged(tiny_model, tmp_path, capsys, monkeypatch):
    """``return_pair_outputs=False`` drops exactly the [B, L, L, C] outputs, keeps the rest bit for bit, and
    the CLI (which uses it) writes what the full output dict gives."""
    from esmfold_fast.esmfold import PAIR_OUTPUT_KEYS, ESMFold
    from esmfold_fast.output import output_to_modelcif, output_to_pdbs, pae_json, scores_json

    model = ESMFold.from_pretrained(tiny_model)
    sequence = f"{CHAIN_A}:{CHAIN_B}"
    with torch.inference_mode():
        full = model.infer([sequence], num_recycles=1)
        lean = model.infer([sequence], num_recycles=1, return_pair_outputs=False)
    assert set(PAIR_OUTPUT_KEYS) <= set(full)
    assert set(full) - set(lean) == set(PAIR_OUTPUT_KEYS) and set(lean) <= set(full)
    assert list(lean) == [k for k in full if k in lean]  # same order
    for key, value in lean.items():
        assert value.dtype == full[key].dtype and torch.equal(value, full[key]), key

    calls = []
    real_infer = ESMFold.infer

    def spy(self, sequences, *args, **kwargs):
        calls.append(kwargs.get("return_pair_outputs", True))
        return real_infer(self, sequences, *args, **kwargs)

    monkeypatch.setattr(ESMFold, "infer", spy)
    fasta = write(tmp_path / "in.fa", f">cplx\n{sequence}\n")
    code, err = run_cli(capsys, "fold", fasta, "-o", tmp_path / "out", "--model", tiny_model,
                        "--num-recycles", "1", "--format", "both")
    assert code == 0, err
    assert calls == [False]
    expected = {
        "cplx.pdb": output_to_pdbs(full)[0],
        "cplx.cif": output_to_modelcif(full, name="cplx")[0],
        "cplx.scores.json": scores_json(full, 0, id="cplx", header="cplx"),
        "cplx.pae.json": pae_json(full, 0),
    }
    assert {p.name: p.read_text() for p in (tmp_path / "out").iterdir() if p.name in expected} == expected


def test_bench_is_forwarded(monkeypatch, capsys):
    import types

    calls = []

    def fake_bench_main(argv):
        calls.append(list(argv))
        return 3 if "--fail" in argv else 0

    monkeypatch.setitem(sys.modules, "esmfold_fast.benchmarking.cli", types.SimpleNamespace(main=fake_bench_main))
    assert main(["bench", "--lengths", "64,128", "--help"]) == 0
    assert main(["bench", "--fail"]) == 3
    assert calls == [["--lengths", "64,128", "--help"], ["--fail"]]

    def exits(argv):
        raise SystemExit(2)  # the bench parser rejecting its arguments

    monkeypatch.setitem(sys.modules, "esmfold_fast.benchmarking.cli", types.SimpleNamespace(main=exits))
    assert main(["bench", "--bogus"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_installed_console_script(tmp_path):
    script = Path(sys.executable).parent / "esmfold-fast"
    if not script.exists():
        script = Path(shutil.which("esmfold-fast") or script)
    assert script.exists(), "the esmfold-fast console script is not installed (pip install -e .)"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    missing = tmp_path / "nope.fa"
    commands = {
        "help": [str(script), "--help"],
        "bad": [str(script), "fold", str(missing), "-o", str(tmp_path / "out"), "--model", str(tmp_path)],
    }
    # Both start at once: each pays the interpreter + torch start-up.
    procs = {k: subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for k, c in commands.items()}
    results = {k: (p.communicate(timeout=120), p.returncode) for k, p in procs.items()}
    (out, _), code = results["help"]
    assert code == 0 and "fold" in out and "bench" in out
    (_, err), code = results["bad"]
    assert code == 2
    assert err.strip().splitlines() == [f"{ERROR_PREFIX}{missing}: no such file"]


def _three(letter: str) -> str:
    from esmfold_fast import residue_constants as rc

    return rc.restype_1to3[letter]
