"""Batch folding and embedding on a local 2-CPU Ray cluster (:mod:`esmfold_fast.distributed`).

One cluster serves the module. A counting fake task checks exactly-once processing, with an actor killed by
``os._exit`` in the middle of a batch; the tiny random ESMFold checks that the structures and the merged
summary equal the single-process CLI's, and that a rerun resumes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from esmfold_fast.cli import main
from esmfold_fast.distributed import Cluster, fold_fasta, run_distributed
from esmfold_fast.fasta import FastaRecord
from test_cli import CHAIN_A, CHAIN_B, MONOMER, run_cli, tiny_model, write  # noqa: F401

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")


@pytest.fixture(scope="module")
def local_ray():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the test module
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield Cluster(address="local", cpus_per_actor=1, actors=2)
    ray.shutdown()


class CountingTask:
    """Appends one line per record written to ``writes.log``; dies (``os._exit``) once in ``die_on``'s write,
    after that batch's earlier records are complete."""

    name, verb = "fold", "folded"
    columns = ("chains", "mean_plddt", "ptm", "iptm")
    chunkable = False
    chunk_size = None

    def __init__(self, logdir: str, die_on: str | None):
        self.logdir, self.die_on = Path(logdir), die_on

    def tokens(self, record):
        return len(record.sequence)

    def run(self, records):
        return [r.sequence.lower() for r in records]

    def write(self, record, output, i, outdir):
        flag = self.logdir / "died"
        if record.id == self.die_on and not flag.exists():
            flag.write_text(str(os.getpid()))
            os._exit(1)  # the actor process dies mid-batch
        if record.id == "bad":
            raise KeyError("a bug in one record")  # any failure is a status row, never a failed job
        (outdir / f"{record.id}.txt").write_text(output[i])
        with open(self.logdir / "writes.log", "a") as log:
            log.write(f"{record.id} {os.getpid()}\n")
        return {"chains": 1, "mean_plddt": 50.0, "ptm": 0.5, "iptm": None}


@dataclasses.dataclass(frozen=True)
class CountingSpec:
    logdir: str
    die_on: str | None = None

    def build(self, model=None, check=True):
        return CountingTask(self.logdir, self.die_on)


def read_summary(outdir: Path) -> dict[str, dict[str, str]]:
    lines = (outdir / "summary.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    return {row["id"]: row for row in (dict(zip(header, ln.split("\t"))) for ln in lines[1:])}


def test_every_record_once_even_when_an_actor_dies(local_ray, tmp_path):
    records = [FastaRecord(f"r{i:02d}", f"r{i:02d}", "ACDEFGHIKL"[: 3 + i % 7], i) for i in range(1, 25)]
    records.append(FastaRecord("bad", "bad", "MKV", 25))
    out = tmp_path / "out"
    spec = CountingSpec(str(tmp_path), die_on="r09")
    report = run_distributed(spec, records, out, max_tokens=30, cluster=local_ray, quiet=True)
    assert (tmp_path / "died").exists()  # the injected death happened
    writes = (tmp_path / "writes.log").read_text().split()
    ids = writes[::2]
    assert sorted(ids) == sorted(r.id for r in records if r.id != "bad")  # each written exactly once
    assert len(set(writes[1::2])) >= 2  # by more than one actor process
    assert report.failed == ["bad"] and len(report.done) == 24
    rows = read_summary(out)
    assert list(rows) == [r.id for r in records]  # one merged summary, input order
    assert {rows[r]["status"] for r in rows if r != "bad"} == {"folded"}
    assert "KeyError" in rows["bad"]["error"] or "a bug" in rows["bad"]["error"]
    for r in records[:-1]:
        assert (out / f"{r.id}.txt").read_text() == r.sequence.lower()

    # A rerun (a restarted driver) does only what is missing.
    (out / "r05.fold.done").unlink()
    (tmp_path / "writes.log").unlink()
    report = run_distributed(spec, records, out, max_tokens=30, cluster=local_ray, quiet=True)
    assert (tmp_path / "writes.log").read_text().split()[::2] == ["r05"]
    assert len(report.skipped) == 23 and report.done == ["r05"]


def test_ray_fold_equals_the_single_process_run(local_ray, tiny_model, tmp_path, capsys):
    fasta = write(tmp_path / "in.fa", f">a\n{MONOMER}\n>b\n{CHAIN_A}\n>c\n{CHAIN_A}:{CHAIN_B}\n>d\n{CHAIN_B}\n"
                                      ">e\nAC1\n")
    code, err = run_cli(capsys, "fold", fasta, "-o", tmp_path / "single", "--model", tiny_model,
                        "--num-recycles", "1", "--max-tokens-per-batch", "40")
    assert code == 1, err  # record e is invalid
    report = fold_fasta(fasta, tmp_path / "ray", model=str(tiny_model), max_tokens=40, cluster=local_ray,
                        quiet=True, fold=_fold_options(num_recycles=1))
    assert report.done == ["a", "b", "c", "d"] and report.failed == ["e"]
    single, distributed = tmp_path / "single", tmp_path / "ray"
    names = {p.name for p in single.iterdir()} - {"fold.log"}
    assert names == {p.name for p in distributed.iterdir()} - {"fold.log"}
    for stem in "abcd":
        for ext in (".pdb", ".scores.json", ".pae.json"):
            assert (distributed / f"{stem}{ext}").exists()
        xyz = [_coords(d / f"{stem}.pdb") for d in (single, distributed)]
        np.testing.assert_allclose(xyz[0], xyz[1], atol=2e-3)
        s1, s2 = (json.loads((d / f"{stem}.scores.json").read_text()) for d in (single, distributed))
        assert s1.keys() == s2.keys()
        np.testing.assert_allclose(s1["plddt"], s2["plddt"], atol=0.011)
    rows_single, rows_ray = read_summary(single), read_summary(distributed)
    assert list(rows_single) == list(rows_ray)
    for rid, row in rows_single.items():
        other = rows_ray[rid]
        assert row.keys() == other.keys()
        for key in ("id", "length", "chains", "status", "error"):
            assert row[key] == other[key], (rid, key)
        for key in ("mean_plddt", "ptm", "iptm"):
            if row[key]:
                assert float(row[key]) == pytest.approx(float(other[key]), abs=0.011), (rid, key)
            else:
                assert other[key] == ""


def test_ray_cli_resumes_and_without_ray_says_how_to_install(local_ray, tiny_model, tmp_path, capsys, monkeypatch):
    fasta = write(tmp_path / "in.fa", f">a\n{MONOMER}\n>b\n{CHAIN_B}\n")
    out = tmp_path / "out"
    args = ("fold", fasta, "-o", out, "--model", tiny_model, "--num-recycles", "0", "-q")
    assert run_cli(capsys, *args, "--max-tokens-per-batch", "0")[0] == 0  # here, then b redone on Ray
    (out / "b.fold.done").unlink()
    assert run_cli(capsys, *args, "--ray", "local", "--ray-cpus-per-actor", "1")[0] == 0
    assert {k: r["status"] for k, r in read_summary(out).items()} == {"a": "skipped", "b": "folded"}

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    code = main(["fold", str(fasta), "-o", str(tmp_path / "o2"), "--model", str(tiny_model), "--ray", "local"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["esmfold-fast: error: --ray: Ray is not installed: pip install "
                                 "'esmfold-fast[ray]' (or pip install 'ray[data]')"]
    assert not (tmp_path / "o2").exists()


def _fold_options(**kw):
    from esmfold_fast.tasks import FoldOptions

    return FoldOptions(**kw)


def _coords(path: Path) -> np.ndarray:
    return np.array([[float(ln[30:38]), float(ln[38:46]), float(ln[46:54])]
                     for ln in path.read_text().splitlines() if ln.startswith("ATOM")])


def test_cpu_replicas_default_to_one_per_node():
    from types import SimpleNamespace

    from esmfold_fast.distributed import _smallest_node_cpus

    nodes = [{"Alive": True, "Resources": {"CPU": 16.0}}, {"Alive": True, "Resources": {"CPU": 8.0}},
             {"Alive": False, "Resources": {"CPU": 2.0}}, {"Alive": True, "Resources": {}}]
    assert _smallest_node_cpus(SimpleNamespace(nodes=lambda: nodes)) == 8.0
    assert _smallest_node_cpus(SimpleNamespace(nodes=lambda: [])) == 1.0
