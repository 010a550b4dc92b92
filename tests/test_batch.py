"""The batch runner behind ``fold`` and ``embed`` (:mod:`esmfold_fast.batch`), driven by a fake task.

The fake task's "model" is deterministic arithmetic on the sequence, so every property of the runner
(packing, resume, recovery, summary, progress) is checked without a network's cost; the real tasks are
checked end to end in tests/test_fold_batch.py.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from esmfold_fast.batch import (
    CHUNK_SIZE_LADDER,
    DoneMarkers,
    is_out_of_memory,
    memory_needed,
    pack_batches,
    run_task,
)
from esmfold_fast.fasta import FastaRecord, RecordError


def rec(i: int, seq: str, rid: str | None = None) -> FastaRecord:
    return FastaRecord(rid or f"r{i}", f"{rid or f'r{i}'} header", seq, i)


class FakeTask:
    """Writes ``<id>.txt`` (the sequence reversed) and ``<id>.len``; records every batch it runs."""

    name, verb = "fake", "faked"
    columns = ("score",)
    chunkable = True

    def __init__(self, oom=None, fail=None, chunk_size=None):
        self.batches: list[list[str]] = []
        self.oom = oom or (lambda records, chunk: False)  # (records, chunk size) -> raise OOM?
        self.fail = fail or (lambda record: None)
        self.chunk_size = chunk_size
        self.chunk_sizes: list[int | None] = []

    def tokens(self, record):
        return len(record.sequence)

    def set_chunk_size(self, chunk_size):
        self.chunk_size = chunk_size

    def run(self, records):
        self.batches.append([r.id for r in records])
        self.chunk_sizes.append(self.chunk_size)
        if self.oom(records, self.chunk_size):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.50 GiB. GPU 0 has a total ...")
        for r in records:
            self.fail(r)
        return [r.sequence[::-1] for r in records]

    def write(self, record, output, i, outdir):
        (outdir / f"{record.id}.txt").write_text(output[i])
        (outdir / f"{record.id}.len").write_text(str(len(output[i])))
        return {"score": len(output[i]) / 100}


def read_summary(outdir: Path) -> list[dict[str, str]]:
    lines = (outdir / "summary.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, ln.split("\t"))) for ln in lines[1:]]


def run(task, records, outdir, **kw):
    outdir.mkdir(exist_ok=True)
    stream = io.StringIO()
    report = run_task(task, records, outdir, stream=stream, **kw)
    return report, stream.getvalue()


# ------------------------------------------------------------------------------------------- packing


def test_pack_batches_sorts_and_respects_the_padded_budget():
    records = [rec(i, "A" * n) for i, n in enumerate([37, 5, 17, 131, 17, 40, 3], start=1)]
    batches = pack_batches(records, lambda r: len(r.sequence), 80)
    assert [[len(r.sequence) for r in b] for b in batches] == [[3, 5, 17, 17], [37, 40], [131]]
    for batch in batches:  # padded size within budget, unless one record alone exceeds it
        assert len(batch) == 1 or len(batch) * max(len(r.sequence) for r in batch) <= 80
    flat = [r.index for b in batches for r in b]
    assert sorted(flat) == list(range(1, 8))  # every record exactly once
    assert [r.index for r in records if len(r.sequence) == 17] == [3, 5]  # equal lengths: file order
    assert [[r.index for r in b] for b in pack_batches(records, lambda r: len(r.sequence), 0)] == [
        [7], [2], [3], [5], [1], [6], [4]
    ]
    with pytest.raises(ValueError):
        pack_batches(records, len, -1)


# ------------------------------------------------------------------------------------------- a run


def test_run_writes_outputs_markers_summary_and_log(tmp_path):
    records = [rec(1, "ACDEFGHIKLMNPQRSTVWYA"), rec(2, "MKV"), rec(3, "GGSGGSGGSGGSG")]
    bad = [RecordError(4, "broken", "in.fa: record 4 'broken': empty sequence")]
    task = FakeTask()
    out = tmp_path / "out"
    report, err = run(task, records, out, bad_records=bad, max_tokens=30, label="in.fa")
    assert report.done == ["r1", "r2", "r3"] and report.failed == ["broken"] and not report.skipped
    assert task.batches == [["r2", "r3"], ["r1"]]  # 2 x 13 <= 30; 21 alone
    for r in records:
        assert (out / f"{r.id}.txt").read_text() == r.sequence[::-1]
        marker = json.loads((out / f"{r.id}.fake.done").read_text())
        assert marker["row"]["status"] == "faked" and marker["row"]["length"] == len(r.sequence)
    rows = read_summary(out)
    assert [r["id"] for r in rows] == ["r1", "r2", "r3", "broken"]  # input order
    assert list(rows[0]) == ["id", "length", "score", "seconds", "status", "error"]
    assert rows[0]["score"] == "0.21" and rows[0]["status"] == "faked" and float(rows[0]["seconds"]) >= 0
    assert rows[3]["status"] == "failed" and "empty sequence" in rows[3]["error"]
    lines = err.splitlines()
    assert lines[0].startswith("in.fa: record 4 'broken': empty sequence")
    assert any(ln.startswith("[3/4] r3: 13 residues, score 0.13") for ln in lines)
    log = (out / "fake.log").read_text()
    assert "fake in.fa: 3 records, 1 invalid" in log and "faked 3, failed 1 of 4 records" in log


def test_resume_skips_complete_records_and_redoes_the_rest(tmp_path):
    records = [rec(i, "A" * (10 + i)) for i in range(1, 6)]
    out = tmp_path / "out"
    run(FakeTask(), records[:3], out, max_tokens=0)
    (out / "r2.fake.done").unlink()  # as if killed after r2's files, before its marker
    changed = [records[0], records[1], rec(3, "C" * 13), *records[3:]]  # r3's sequence changed
    task = FakeTask()
    report, err = run(task, changed, out, max_tokens=0)
    assert report.skipped == ["r1"] and report.done == ["r2", "r3", "r4", "r5"]
    assert sorted(sum(task.batches, [])) == ["r2", "r3", "r4", "r5"]
    assert (out / "r3.txt").read_text() == "C" * 13
    rows = {r["id"]: r for r in read_summary(out)}
    assert rows["r1"]["status"] == "skipped" and rows["r1"]["score"] == "0.11"  # the row kept in the marker
    assert "1 records already complete" in err

    task = FakeTask()
    report, _ = run(task, changed, out, max_tokens=0)
    assert task.batches == [] and len(report.skipped) == 5
    task = FakeTask()
    report, _ = run(task, changed, out, max_tokens=0, overwrite=True)
    assert len(task.batches) == 5 and len(report.done) == 5


def test_out_of_memory_splits_then_lowers_the_chunk_then_reports(tmp_path):
    lengths = {"a": 10, "b": 11, "c": 12, "d": 13, "e": 40, "f": 50}
    records = [rec(i, "A" * n, rid) for i, (rid, n) in enumerate(lengths.items(), start=1)]

    def oom(batch, chunk):
        longest = max(len(r.sequence) for r in batch)
        if len(batch) > 2:
            return True  # only pairs fit
        if longest == 40:
            return chunk is None or chunk > 32  # fits once the chunk is 32
        return longest == 50  # never fits

    task = FakeTask(oom=oom)
    report, err = run(task, records, tmp_path / "out", max_tokens=1000, label="in.fa")
    assert report.done == ["a", "b", "c", "d", "e"] and report.failed == ["f"]
    assert task.batches[0] == ["a", "b", "c", "d", "e", "f"]
    assert task.batches[1:4] == [["a", "b", "c"], ["a", "b"], ["c"]]
    e_tries = [c for b, c in zip(task.batches, task.chunk_sizes) if b == ["e"]]
    assert e_tries == [None, 128, 64, 32]  # down the ladder until it fits
    f_tries = [c for b, c in zip(task.batches, task.chunk_sizes) if b == ["f"]]
    assert f_tries == [32, 16]  # the lowered chunk is kept; then the ladder ends
    assert CHUNK_SIZE_LADDER[-1] == 16
    (f_row,) = [r for r in read_summary(tmp_path / "out") if r["id"] == "f"]
    assert f_row["status"] == "failed"
    assert "out of memory at 50 tokens even with chunk size 16 (an allocation of 3.50 GiB failed)" in f_row["error"]
    assert "in.fa: record 6 'f': out of memory at 50 tokens" in err


def test_a_failing_record_does_not_take_its_batch_down_and_bugs_propagate(tmp_path):
    def fail(record):
        if record.id == "r2":
            raise ValueError("non-finite coordinates")

    records = [rec(i, "A" * 5) for i in range(1, 4)]
    task = FakeTask(fail=fail)
    report, _ = run(task, records, tmp_path / "out", max_tokens=100)
    assert report.done == ["r1", "r3"] and report.failed == ["r2"]
    assert task.batches == [["r1", "r2", "r3"], ["r1"], ["r2"], ["r3"]]
    assert not (tmp_path / "out" / "r2.fake.done").exists()

    def bug(record):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run(FakeTask(fail=bug), records, tmp_path / "out2", max_tokens=100)
    assert (tmp_path / "out2" / "summary.tsv").exists()  # closed on the way out


def test_writer_failure_leaves_no_marker(tmp_path):
    class BadWriter(FakeTask):
        def write(self, record, output, i, outdir):
            if record.id == "r1":
                raise OSError(28, "No space left on device")
            return super().write(record, output, i, outdir)

    report, err = run(BadWriter(), [rec(1, "AAA"), rec(2, "CC")], tmp_path / "out", max_tokens=0)
    assert report.failed == ["r1"] and report.done == ["r2"]
    assert not (tmp_path / "out" / "r1.fake.done").exists()
    assert "writing outputs failed: [Errno 28] No space left on device" in err


def test_quiet_prints_only_errors_and_markers_ignore_foreign_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "r1.fake.done").write_text("not json")
    (out / ".r9.txt.abc123.tmp").write_text("half")  # left by a killed run
    report, err = run(FakeTask(), [rec(1, "AAA")], out, quiet=True,
                      bad_records=[RecordError(2, "x", "in.fa: record 2 'x': empty sequence")])
    assert report.done == ["r1"]
    assert err.splitlines() == ["in.fa: record 2 'x': empty sequence"]
    assert not (out / ".r9.txt.abc123.tmp").exists()
    assert DoneMarkers(out, "fake").load(rec(1, "AAA"))["status"] == "faked"
    assert DoneMarkers(out, "fake").load(rec(1, "AAAA")) is None


def test_progress_bar_on_a_terminal(tmp_path):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    (tmp_path / "out").mkdir()
    run_task(FakeTask(), [rec(i, "A" * i) for i in range(1, 4)], tmp_path / "out", stream=stream)
    text = stream.getvalue()
    assert "3/3" in text and "rec" in text  # tqdm's bar, not per-record lines
    assert "[1/3]" not in text


def test_out_of_memory_recognition():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] err == 0. DefaultCPUAllocator: "
                                         "can't allocate memory: you tried to allocate 53687091200 bytes."))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert memory_needed(RuntimeError("you tried to allocate 53687091200 bytes")) == "50.00 GiB"
    assert memory_needed(RuntimeError("Tried to allocate 2.00 GiB (GPU 0; 79 GiB total)")) == "2.00 GiB"
    assert memory_needed(RuntimeError("boom")) == ""


# ------------------------------------------------------------------------------------------- SIGKILL


_KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import esmfold_fast.output as output
    from esmfold_fast.batch import run_task
    from test_batch import FakeTask, rec

    class AtomicTask(FakeTask):
        def write(self, record, out, i, outdir):
            for suffix, text in ((".txt", out[i] * 1000), (".len", str(len(out[i])))):
                output.atomic_write(outdir / f"{{record.id}}{{suffix}}", text)
            return {{"score": 1.0}}

    real = os.replace
    calls = [0]

    def dying_replace(src, dst):
        calls[0] += 1
        if calls[0] == {kill_at}:  # mid-record, mid-batch: the temporary file is written, not renamed
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)

    output.os.replace = dying_replace
    records = [rec(i, "ACDEFGHIK"[: 3 + i]) for i in range(1, 7)]
    task = AtomicTask()
    run_task(task, records, Path({out!r}), max_tokens=40)
    print(sum(task.batches, []))
    """
)


def test_sigkill_mid_batch_then_rerun_completes_without_redoing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    tests = str(Path(__file__).parent)

    def script(kill_at):
        return _KILLED_RUN.format(tests=tests, kill_at=kill_at, out=str(out))

    # os.replace calls: 1 the summary header, then .txt, .len and the marker per record: the 6th is r2.s .len.
    proc = subprocess.run([sys.executable, "-c", script(6)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    finals = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert {"r1.txt", "r1.len", "r1.fake.done", "r2.txt"} <= finals and "r2.fake.done" not in finals
    assert "r2.len" not in finals  # the file being written died under its temporary name
    for name in finals:
        if name.endswith(".txt"):
            assert len((out / name).read_text()) % 1000 == 0  # whole, never truncated
    proc = subprocess.run([sys.executable, "-c", script(-1)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert eval(proc.stdout.strip()) == ["r2", "r3", "r4", "r5", "r6"]  # r1 is not redone
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    rows = read_summary(out)
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(1, 7)]
    assert [r["status"] for r in rows] == ["skipped"] + ["faked"] * 5
    for i in range(1, 7):
        assert (out / f"r{i}.len").read_text() == str(3 + i) and os.path.exists(out / f"r{i}.fake.done")
