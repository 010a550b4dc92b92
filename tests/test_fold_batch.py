"""``esmfold-fast fold`` as a batch tool, end to end on a tiny random checkpoint: batching that changes no result,
resume, out-of-memory recovery, SIGKILL safety, summary.tsv, stdin, multimer options, quiet mode."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from esmfold_fast.cli import main
from test_cli import CHAIN_A, CHAIN_B, ERROR_PREFIX, MONOMER, error_lines, run_cli, tiny_model, write  # noqa: F401

GEN = torch.Generator().manual_seed(11)
LETTERS = "ACDEFGHIKLMNPQRSTVWY"


def random_sequence(n: int) -> str:
    return "".join(LETTERS[i] for i in torch.randint(0, 20, (n,), generator=GEN).tolist())


ODD = {"s17": random_sequence(17), "s37": random_sequence(37), "s131": random_sequence(131),
       "cplx": f"{random_sequence(13)}:{random_sequence(9)}"}


@pytest.fixture
def infer_calls(monkeypatch):
    """Every ``ESMFold.infer`` call's sequences and keyword arguments."""
    from esmfold_fast.esmfold import ESMFold

    calls = []
    real = ESMFold.infer

    def spy(self, sequences, *args, **kwargs):
        calls.append((list(sequences), kwargs))
        return real(self, sequences, *args, **kwargs)

    monkeypatch.setattr(ESMFold, "infer", spy)
    return calls


def read_summary(outdir: Path) -> dict[str, dict[str, str]]:
    lines = (outdir / "summary.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    return {row["id"]: row for row in (dict(zip(header, ln.split("\t"))) for ln in lines[1:])}


def test_batched_folding_equals_folding_alone(tiny_model):
    """Padding never leaks: each item of a padded batch equals the record folded on its own."""
    from esmfold_fast.esmfold import ESMFold

    model = ESMFold.from_pretrained(tiny_model)
    sequences = list(ODD.values())
    with torch.inference_mode():
        batched = model.infer(sequences, num_recycles=1, return_pair_outputs=False)
        for i, seq in enumerate(sequences):
            alone = model.infer([seq], num_recycles=1, return_pair_outputs=False)
            n = alone["aatype"].shape[1]
            real = alone["atom37_atom_exists"][0].bool()  # [n, 37]
            pos_b, pos_a = batched["positions"][-1, i, :n], alone["positions"][-1, 0]  # [n, 14, 3]
            torch.testing.assert_close(pos_b, pos_a, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(batched["plddt"][i, :n][real], alone["plddt"][0][real], rtol=1e-4, atol=1e-3)
            torch.testing.assert_close(batched["ptm"][i], alone["ptm"][0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(batched["predicted_aligned_error"][i, :n, :n],
                                       alone["predicted_aligned_error"][0], rtol=1e-4, atol=1e-3)


def test_cli_batches_sort_and_agree_with_one_record_per_pass(tiny_model, tmp_path, capsys, infer_calls):
    fasta = write(tmp_path / "in.fa", "".join(f">{k}\n{v}\n" for k, v in ODD.items()))
    code, err = run_cli(capsys, "fold", fasta, "-o", tmp_path / "batched", "--model", tiny_model,
                        "--num-recycles", "1", "--max-tokens-per-batch", "150")
    assert code == 0, err
    # Tokens: s17 17, cplx 13 + 25 + 9 = 47, s37 37, s131 131: padded 3 x 47 = 141 <= 150, then 131 alone.
    assert [c[0] for c in infer_calls] == [[ODD["s17"], ODD["s37"], ODD["cplx"]], [ODD["s131"]]]
    infer_calls.clear()
    code, err = run_cli(capsys, "fold", fasta, "-o", tmp_path / "single", "--model", tiny_model,
                        "--num-recycles", "1", "--max-tokens-per-batch", "0")
    assert code == 0, err
    assert [len(c[0]) for c in infer_calls] == [1, 1, 1, 1]
    for stem in ODD:
        a = json.loads((tmp_path / "batched" / f"{stem}.scores.json").read_text())
        b = json.loads((tmp_path / "single" / f"{stem}.scores.json").read_text())
        np.testing.assert_allclose(a["plddt"], b["plddt"], atol=0.011)  # 2-decimal rounding
        np.testing.assert_allclose(a["ptm"], b["ptm"], atol=2e-4)
        xyz = [np.array([[float(ln[30:38]), float(ln[38:46]), float(ln[46:54])]
                         for ln in (tmp_path / d / f"{stem}.pdb").read_text().splitlines() if ln.startswith("ATOM")])
               for d in ("batched", "single")]
        np.testing.assert_allclose(xyz[0], xyz[1], atol=2e-3)  # 3-decimal PDB columns


def test_summary_rows_match_the_scores_files(tiny_model, tmp_path, capsys):
    fasta = write(tmp_path / "in.fa", f">mono\n{MONOMER}\n>bad\nAC1\n>cplx\n{CHAIN_A}:{CHAIN_B}\n")
    code, err = run_cli(capsys, "fold", fasta, "-o", tmp_path / "out", "--model", tiny_model, "--num-recycles", "0")
    assert code == 1
    rows = read_summary(tmp_path / "out")
    assert list(rows) == ["mono", "bad", "cplx"]
    assert list(rows["mono"]) == ["id", "length", "chains", "mean_plddt", "ptm", "iptm", "seconds", "status", "error"]
    for stem, chains in (("mono", 1), ("cplx", 2)):
        scores = json.loads((tmp_path / "out" / f"{stem}.scores.json").read_text())
        row = rows[stem]
        assert row["status"] == "folded" and row["error"] == "" and int(row["chains"]) == chains
        assert int(row["length"]) == len(scores["plddt"])
        assert float(row["mean_plddt"]) == pytest.approx(scores["mean_plddt"], abs=0.006)
        assert float(row["ptm"]) == pytest.approx(scores["ptm"], abs=6e-5)
        assert (row["iptm"] == "") == (chains == 1)
        if chains > 1:
            assert float(row["iptm"]) == pytest.approx(scores["iptm"], abs=6e-5)
    assert rows["bad"]["status"] == "failed" and "invalid letters" in rows["bad"]["error"]


def test_resume_and_overwrite(tiny_model, tmp_path, capsys, infer_calls):
    fasta = write(tmp_path / "in.fa", f">a\n{MONOMER}\n>b\n{CHAIN_A}\n>c\n{CHAIN_B}\n")
    out = tmp_path / "out"
    args = ("fold", fasta, "-o", out, "--model", tiny_model, "--num-recycles", "0", "--max-tokens-per-batch", "0")
    assert run_cli(capsys, *args)[0] == 0
    first = {p.name: p.read_bytes() for p in out.iterdir() if p.name.startswith("a.")}
    (out / "b.fold.done").unlink()  # b's files are there but b is not complete
    infer_calls.clear()
    code, err = run_cli(capsys, *args)
    assert code == 0 and [c[0] for c in infer_calls] == [[CHAIN_A]]
    assert "2 records already complete" in err and "folded 1, skipped 2 already complete of 3 records" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name.startswith("a.")} == first
    assert {r["status"] for r in read_summary(out).values()} == {"skipped", "folded"}
    infer_calls.clear()
    assert run_cli(capsys, *args, "--overwrite")[0] == 0
    assert len(infer_calls) == 3


def test_out_of_memory_in_a_batch_splits_it_and_folds_everything(tiny_model, tmp_path, capsys, monkeypatch):
    from esmfold_fast.esmfold import ESMFold

    real = ESMFold.infer
    sizes = []

    def small_memory(self, sequences, *args, **kwargs):
        sizes.append(len(sequences))
        if len(sequences) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB")
        return real(self, sequences, *args, **kwargs)

    monkeypatch.setattr(ESMFold, "infer", small_memory)
    fasta = write(tmp_path / "in.fa", f">a\n{MONOMER}\n>b\n{CHAIN_A}\n>c\n{CHAIN_B}\n")
    code, err = run_cli(capsys, "fold", fasta, "-o", tmp_path / "out", "--model", tiny_model, "--num-recycles", "0")
    assert code == 0, err
    assert sizes == [3, 2, 1, 1, 1]
    assert {r["status"] for r in read_summary(tmp_path / "out").values()} == {"folded"}
    assert "splitting it into 2 + 1" in (tmp_path / "out" / "fold.log").read_text()


def test_stdin_quiet_and_multimer_options(tiny_model, tmp_path, capsys, monkeypatch, infer_calls):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(f">x\n{CHAIN_A}:{CHAIN_B}\n".encode())))
    code, err = run_cli(capsys, "fold", "-", "-o", tmp_path / "out", "--model", tiny_model, "--quiet",
                        "--num-recycles", "0", "--chain-linker", "gs" * 5, "--residue-index-offset", "100")
    assert code == 0 and err == ""
    assert infer_calls[0][1]["chain_linker"] == "GS" * 5 and infer_calls[0][1]["residue_index_offset"] == 100
    assert int(read_summary(tmp_path / "out")["x"]["length"]) == len(CHAIN_A) + len(CHAIN_B)
    assert main(["fold", "-", "-o", str(tmp_path / "o2"), "--model", str(tiny_model), "--chain-linker", "G1"]) == 2


_KILLED_FOLD = textwrap.dedent(
    """
    import os, signal, sys
    import esmfold_fast.output as output
    from esmfold_fast.cli import main

    real, calls = os.replace, [0]

    def dying_replace(src, dst):
        calls[0] += 1
        if calls[0] == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)

    os.replace = dying_replace
    sys.exit(main({argv!r}))
    """
)


def test_sigkill_mid_batch_and_rerun(tiny_model, tmp_path):
    fasta = write(tmp_path / "in.fa", "".join(f">r{i}\n{MONOMER[: 8 + i]}\n" for i in range(4)))
    out = tmp_path / "out"
    argv = ["fold", str(fasta), "-o", str(out), "--model", str(tiny_model), "--num-recycles", "0", "-q"]
    # Renames: summary.tsv, then .pdb, .scores.json, .pae.json and the marker per record: the 7th is r1's
    # scores file, inside the first (and only) batch.
    script = _KILLED_FOLD.format(kill_at=7, argv=argv)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    names = {p.name for p in out.iterdir()}
    assert {"r0.pdb", "r0.fold.done", "r1.pdb"} <= names and "r1.fold.done" not in names
    assert "r1.scores.json" not in names and not (names & {"r2.pdb", "r3.pdb"})
    for name in names - {"fold.log"}:
        if not name.startswith("."):
            text = (out / name).read_text()
            assert text.endswith("\n") and (not name.endswith(".json") or json.loads(text) is not None)
    r0 = (out / "r0.pdb").read_bytes()
    proc = subprocess.run([sys.executable, "-c", _KILLED_FOLD.format(kill_at=-1, argv=argv)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = read_summary(out)
    assert [rows[f"r{i}"]["status"] for i in range(4)] == ["skipped", "folded", "folded", "folded"]
    assert (out / "r0.pdb").read_bytes() == r0
    assert all((out / f"r{i}.fold.done").exists() for i in range(4))
    assert not [n for n in (p.name for p in out.iterdir()) if n.startswith(".")]


def test_no_valid_record_loads_nothing_and_creates_nothing(tmp_path, capsys):
    fasta = write(tmp_path / "in.fa", ">a\nAC1\n>b\n\n")
    code, err = run_cli(capsys, "fold", fasta, "-o", tmp_path / "out", "--model", tmp_path / "no_model")
    assert code == 1 and not (tmp_path / "out").exists()
    assert error_lines(err)[-1] == f"{ERROR_PREFIX}{fasta}: no valid records to fold"
    assert len(error_lines(err)) == 3


def test_download_flag_resolves_the_name_first_and_only_when_given(tiny_model, tmp_path, capsys, monkeypatch):
    from esmfold_fast import pretrained

    asked = []

    def fake_ensure_local(name, kind):
        asked.append((name, kind))
        return str(tiny_model)  # as if fetched into the cache

    monkeypatch.setattr(pretrained, "ensure_local", fake_ensure_local)
    fasta = write(tmp_path / "in.fa", f">a\n{MONOMER}\n")
    code, err = run_cli(capsys, "fold", fasta, "-o", tmp_path / "out", "--model", "esmfold_v1", "--download",
                        "--num-recycles", "0")
    assert code == 0, err
    assert asked == [("esmfold_v1", "esmfold")]
    code, err = run_cli(capsys, "fold", fasta, "-o", tmp_path / "out2", "--model", "esmfold_v1")
    assert code == 2 and asked == [("esmfold_v1", "esmfold")]  # never without --download
    assert "esmfold_v1" in error_lines(err)[0]
