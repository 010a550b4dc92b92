"""Batch runs over FASTA records, shared by ``fold`` and ``embed``: token-budget batches, resume by done
markers, out-of-memory recovery, progress, ``summary.tsv`` and a run log.

A run is a :class:`Task` (what one batch computes and which files a record gets) driven by :func:`run_task`:

* **Batches.** Records are sorted by length and packed greedily while the *padded* batch (records x longest
  record, in tokens) stays within ``max_tokens`` (fair-esm's ``--max-tokens-per-batch``; ``0``: one record
  per pass). A record longer than the budget runs alone. Padding never reaches another item's outputs.
* **Resume.** A record is complete when ``<id>.<task>.done`` exists. It is written last, atomically, after
  every output of the record (each itself written to a temporary name and renamed), and holds the record's
  summary row and a hash of its sequence: a rerun skips complete records whose sequence is unchanged and
  redoes everything else, so a run killed at any point (SIGKILL included) leaves no truncated file under a
  final name and loses at most the batch in flight. ``overwrite=True`` redoes all.
* **Out of memory** (CUDA, or a CPU allocation failure torch reports): the batch is split in halves and each
  half retried; a single record that still fails is retried with the trunk's chunk size lowered along
  :data:`CHUNK_SIZE_LADDER` (kept lowered for the rest of the run: records come shortest first, so the
  next ones need at least as much); a record that fails at the smallest chunk is reported with its length and
  the allocation that failed. Any other failure of a multi-record batch reruns its records one by one, so
  one bad record never takes its batch mates down. Every other record is still processed.
* **Progress** on stderr: a tqdm bar with ETA when stderr is a terminal, one line per record otherwise,
  nothing but errors with ``quiet``; a final summary line of what was done, skipped and failed.
* **summary.tsv**: one row per input record (bad FASTA records included), appended as each record finishes
  and rewritten in input order at the end; ``<task>.log``: the run's lines with timestamps, appended.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence, TextIO

from .checkpoints.files import first_line as _one_line
from .fasta import FastaRecord, RecordError
from .output import atomic_write

# Trunk chunk sizes tried in turn when a single record runs out of memory (fair-esm suggests 128, 64, 32).
CHUNK_SIZE_LADDER = (128, 64, 32, 16)
SUMMARY_FILE = "summary.tsv"
BASE_COLUMNS = ("id", "length")
TAIL_COLUMNS = ("seconds", "status", "error")
# Statuses in summary.tsv: done this run (the task's verb), complete from an earlier run, or failed.
SKIPPED, FAILED = "skipped", "failed"

_TMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")  # atomic_write's temporary names


class Task(Protocol):
    """What :func:`run_task` needs from ``fold`` or ``embed``."""

    name: str  # "fold" / "embed": names the done markers and the log
    verb: str  # status of a record done in this run ("folded" / "embedded")
    columns: tuple[str, ...]  # the task's own summary.tsv columns, between "length" and "seconds"
    chunkable: bool  # whether lowering the chunk size can save a record that runs out of memory

    def tokens(self, record: FastaRecord) -> int:
        """Tokens the record occupies in a batch (its padded length)."""

    def run(self, records: Sequence[FastaRecord]) -> Any:
        """One forward pass over ``records``; raises on failure (out of memory included)."""

    def write(self, record: FastaRecord, output: Any, i: int, outdir: Path) -> dict[str, Any]:
        """Write item ``i`` of ``output`` as ``record``'s files (each atomically); returns its summary
        columns."""

    @property
    def chunk_size(self) -> int | None:
        """The model's current trunk chunk size (None where the task has no such knob)."""

    def set_chunk_size(self, chunk_size: int | None) -> None: ...


@dataclass
class RunReport:
    """What a run did: ids per status, in input order."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_ok(self) -> bool:
        return not self.failed


# ----------------------------------------------------------------------------------------------
# batches
# ----------------------------------------------------------------------------------------------


def pack_batches(
    records: Sequence[FastaRecord], tokens: Callable[[FastaRecord], int], max_tokens: int
) -> list[list[FastaRecord]]:
    """Records sorted by ``tokens`` (file order among equals), packed greedily while
    ``len(batch) * max(tokens)`` stays within ``max_tokens``; ``max_tokens=0``: one record per batch."""
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    ordered = sorted(records, key=lambda r: (tokens(r), r.index))
    batches: list[list[FastaRecord]] = []
    for record in ordered:
        n = tokens(record)
        if batches and max_tokens and (len(batches[-1]) + 1) * n <= max_tokens:  # n is the batch's longest
            batches[-1].append(record)
        else:
            batches.append([record])
    return batches


# ----------------------------------------------------------------------------------------------
# done markers and summary.tsv
# ----------------------------------------------------------------------------------------------


def sequence_hash(sequence: str) -> str:
    return hashlib.sha256(sequence.encode()).hexdigest()[:16]


class DoneMarkers:
    """``<id>.<task>.done`` files in ``outdir``: a record's summary row, written after all its outputs."""

    def __init__(self, outdir: Path, task_name: str) -> None:
        self.outdir, self.suffix = outdir, f".{task_name}.done"

    def path(self, record: FastaRecord) -> Path:
        return self.outdir / f"{record.id}{self.suffix}"

    def load(self, record: FastaRecord) -> dict[str, Any] | None:
        """The row of a complete earlier run of ``record`` (same sequence), else None."""
        try:
            marker = json.loads(self.path(record).read_text())
        except (OSError, ValueError):  # absent, or not ours: not complete
            return None
        if not isinstance(marker, dict) or marker.get("sequence_sha256") != sequence_hash(record.sequence):
            return None
        row = marker.get("row")
        return row if isinstance(row, dict) else None

    def mark(self, record: FastaRecord, row: dict[str, Any]) -> None:
        marker = {"id": record.id, "sequence_sha256": sequence_hash(record.sequence), "row": row}
        atomic_write(self.path(record), json.dumps(marker, allow_nan=False) + "\n")

    def clear(self, record: FastaRecord) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(record).unlink()


class Summary:
    """``summary.tsv``: rows appended as records finish (a crash leaves every finished row), rewritten in
    input order by :meth:`close`."""

    def __init__(self, path: Path, columns: Sequence[str], order: dict[str, int]) -> None:
        self.path, self.columns, self.order = path, tuple(columns), order
        self.rows: dict[str, dict[str, Any]] = {}
        atomic_write(self.path, self._line(dict(zip(self.columns, self.columns))))
        self._file = open(self.path, "a", encoding="utf-8")

    def add(self, row: dict[str, Any]) -> None:
        self.rows[str(row["id"])] = row
        self._file.write(self._line(row))
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        rows = sorted(self.rows.values(), key=lambda r: self.order.get(str(r["id"]), math.inf))
        header = dict(zip(self.columns, self.columns))
        atomic_write(self.path, "".join(self._line(r) for r in [header, *rows]))

    def _line(self, row: dict[str, Any]) -> str:
        return "\t".join(_cell(row.get(c)) for c in self.columns) + "\n"


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}"
    return " ".join(str(value).split())  # no tab or newline inside a cell


def remove_stale_temporaries(outdir: Path) -> int:
    """Delete the temporary files of writes a killed run left half done (never a final name)."""
    removed = 0
    for path in outdir.iterdir():
        if _TMP_NAME.match(path.name) and path.is_file():
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed


# ----------------------------------------------------------------------------------------------
# out of memory
# ----------------------------------------------------------------------------------------------

_CPU_OOM = ("can't allocate memory", "not enough memory", "out of memory")
_ASKED = re.compile(r"(?:tried to allocate|allocate)\s+([0-9.]+\s*(?:[KMGT]i?B|bytes))", re.IGNORECASE)


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's ``OutOfMemoryError``, or the RuntimeError torch's CPU allocator raises (a MemoryError too)."""
    import torch

    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(err, RuntimeError) and any(s in str(err).lower() for s in _CPU_OOM)


def memory_needed(err: BaseException) -> str:
    """The failing allocation's size as the allocator reported it, e.g. ``2.00 GiB``, or ''."""
    found = _ASKED.search(str(err))
    if not found:
        return ""
    size = found.group(1)
    if size.endswith("bytes"):
        size = f"{int(float(size.split()[0])) / 2**30:.2f} GiB"
    return size


def release_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------
# progress and log
# ----------------------------------------------------------------------------------------------


class Progress:
    """A tqdm bar on a terminal, a line per record otherwise, only errors when ``quiet``; every line also
    goes to the run log."""

    def __init__(self, total: int, log: logging.Logger, quiet: bool, stream: TextIO | None = None,
                 desc: str = "", error_prefix: str = "") -> None:
        self.stream = stream or sys.stderr
        self.error_prefix = error_prefix
        self.log, self.quiet, self.total, self.count = log, quiet, total, 0
        self.bar = None
        if not quiet and total and _is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, file=self.stream, unit="rec", desc=desc, dynamic_ncols=True)

    def info(self, message: str) -> None:
        self.log.info(message)
        if not self.quiet:
            self._print(message)

    def error(self, message: str) -> None:
        self.log.error(message)
        self._print(self.error_prefix + message)

    def advance(self, message: str | None = None, error: bool = False) -> None:
        """One record finished: ``message`` is its line (``[n/N]`` prefixed, errors with the prefix only)."""
        self.count += 1
        if message is not None:
            line = f"[{self.count}/{self.total}] {message}"
            if error:
                self.error(message)
            elif self.bar is None:
                self.info(line)
            else:  # the bar shows it; the log keeps it
                self.log.info(line)
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def _print(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def run_log(path: Path) -> Iterator[logging.Logger]:
    """A logger appending timestamped lines to ``path`` for the duration of a run (no global handlers)."""
    logger = logging.getLogger(f"esmfold_fast.run.{id(path)}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        handler.close()


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------


@dataclass
class _Run:
    task: Task
    outdir: Path
    markers: DoneMarkers
    emit: Callable[[dict[str, Any]], None]  # takes each finished record's summary row
    progress: Progress
    label: str  # the input's name, for error lines
    report: RunReport
    record_errors: tuple[type[BaseException], ...]  # what fails a record; anything else is a bug and stops the run

    def batch(self, records: list[FastaRecord]) -> None:
        """Run one batch and write its records; failures are split, retried, or reported per record."""
        started = time.perf_counter()
        try:
            output = self.task.run(records)
        except self.record_errors as err:
            release_accelerator_memory()
            if len(records) > 1:
                self.split(records, err)
            else:
                self.single_failed(records[0], err)
            return
        seconds = time.perf_counter() - started
        total = sum(self.task.tokens(r) for r in records)
        for i, record in enumerate(records):
            self.write(record, output, i, seconds * self.task.tokens(record) / total)
        del output
        release_accelerator_memory()

    def split(self, records: list[FastaRecord], err: BaseException) -> None:
        if is_out_of_memory(err):
            half = (len(records) + 1) // 2
            self.progress.log.warning(
                f"out of memory on a batch of {len(records)} records ({memory_needed(err) or _one_line(err)}); "
                f"splitting it into {half} + {len(records) - half}"
            )
            self.batch(records[:half])
            self.batch(records[half:])
        else:
            self.progress.log.warning(f"a batch of {len(records)} failed ({_one_line(err)}); running its "
                                      "records one by one")
            for record in records:
                self.batch([record])

    def single_failed(self, record: FastaRecord, err: BaseException) -> None:
        if is_out_of_memory(err):
            lower = _next_chunk_size(self.task.chunk_size) if self.task.chunkable else None
            if lower is not None:
                self.progress.info(
                    f"{record.id}: out of memory at {self.task.tokens(record)} tokens; retrying with chunk size "
                    f"{lower} (kept for the rest of the run)"
                )
                self.task.set_chunk_size(lower)
                self.batch([record])
                return
            needed = memory_needed(err)
            at_chunk = f" even with chunk size {self.task.chunk_size}" if self.task.chunkable else ""
            message = (
                f"out of memory at {self.task.tokens(record)} tokens{at_chunk}"
                + (f" (an allocation of {needed} failed)" if needed else f" ({_one_line(err)})")
                + "; try a lower-precision --dtype, a larger device or a shorter sequence"
            )
        else:
            message = f"{self.task.name}ing failed: {describe_failure(err)}"
        self.failed(record, message, 0.0)

    def write(self, record: FastaRecord, output: Any, i: int, seconds: float) -> None:
        try:
            self.markers.clear(record)
            columns = self.task.write(record, output, i, self.outdir)
        except self.record_errors as err:
            self.failed(record, f"writing outputs failed: {describe_failure(err)}", seconds)
            return
        row = self.row(record, status=self.task.verb, seconds=seconds, **columns)
        self.markers.mark(record, row)  # last: the record is complete from here on
        self.emit(row)
        self.report.done.append(record.id)
        shown = ", ".join(f"{k} {_cell(v)}" for k, v in columns.items() if v is not None)
        self.progress.advance(f"{record.id}: {record.num_residues} residues, {shown} ({seconds:.1f} s)")

    def failed(self, record: FastaRecord, message: str, seconds: float) -> None:
        self.emit(self.row(record, status=FAILED, seconds=seconds, error=message))
        self.report.failed.append(record.id)
        self.progress.advance(f"{self.label}: record {record.index} {record.id!r}: {message}", error=True)

    def row(self, record: FastaRecord, **values: Any) -> dict[str, Any]:
        return {"id": record.id, "length": record.num_residues, **values}


def _next_chunk_size(current: int | None) -> int | None:
    smaller = [c for c in CHUNK_SIZE_LADDER if current is None or c < current]
    return smaller[0] if smaller else None


def describe_failure(err: BaseException) -> str:
    """One line for a failed record: Triton's errors with what to try, out-of-memory with a hint."""
    if type(err).__module__.split(".")[0] == "triton":
        return _triton_failure(err)
    message = _one_line(err)
    if is_out_of_memory(err):
        message += " (try a smaller --chunk-size, a lower-precision --dtype or a shorter sequence)"
    return message


def _triton_failure(err: BaseException) -> str:
    kinds = {cls.__name__ for cls in type(err).__mro__}
    if "OutOfResources" in kinds:
        detail = _one_line(err).split(". Reducing block sizes")[0]  # advice for kernel authors, not users
        return (f"Triton kernel out of resources ({detail}); try a smaller --chunk-size, another --dtype "
                "or --backend torch")
    if "CompilationError" in kinds:
        # The message opens with the kernel's source; the error itself is error_message.
        detail = _one_line(getattr(err, "error_message", None) or err)
        return f"Triton kernel failed to compile ({type(err).__name__}: {detail}); try --backend torch"
    return f"Triton error ({type(err).__name__}: {_one_line(err)}); try --backend torch"


@dataclass
class Session:
    """One run's shared state: the log, the summary, progress and report, and the records left to do."""

    task: Task
    outdir: Path
    log: logging.Logger
    summary: Summary
    progress: Progress
    markers: DoneMarkers
    report: RunReport = field(default_factory=RunReport)
    todo: list[FastaRecord] = field(default_factory=list)

    def begin(self, records: Sequence[FastaRecord], bad_records: Sequence[RecordError], overwrite: bool) -> None:
        """Rows for the invalid records and for those complete from an earlier run; the rest go to ``todo``.
        With ``overwrite`` every marker is removed first, so no worker skips a record either."""
        for err in bad_records:
            self.summary.add({"id": err.id, "status": FAILED, "error": err.message})
            self.report.failed.append(err.id)
            self.progress.advance(err.message, error=True)
        for record in records:
            if overwrite:
                self.markers.clear(record)
            previous = None if overwrite else self.markers.load(record)
            if previous is None:
                self.todo.append(record)
                continue
            self.summary.add({**previous, "status": SKIPPED})
            self.report.skipped.append(record.id)
            self.progress.advance(None)
        if self.report.skipped:
            self.progress.info(f"{len(self.report.skipped)} records already complete in {self.outdir} (skipped; "
                               "--overwrite redoes them)")

    def add_row(self, row: dict[str, Any]) -> None:
        """A row a worker made (:func:`process_batch`): into the summary, the report and the progress."""
        self.summary.add(row)
        failed = row.get("status") == FAILED
        (self.report.failed if failed else self.report.done).append(str(row["id"]))
        shown = ", ".join(f"{k} {_cell(row.get(k))}" for k in self.task.columns if row.get(k) is not None)
        line = f"{row['id']}: {row.get('length')} residues, {shown} ({_cell(row.get('seconds'))} s)"
        self.progress.advance(row.get("error") if failed else line, error=failed)


@dataclass(frozen=True)
class RunOptions:
    """How a run goes, here or on Ray: ``label`` names the input in error lines; ``max_tokens`` is the padded
    batch budget (0: one record per pass); ``overwrite`` redoes complete records; ``quiet`` prints errors only;
    ``stream`` takes the progress (default stderr); ``error_prefix`` opens each error line."""

    label: str = "input"
    max_tokens: int = 1024
    overwrite: bool = False
    quiet: bool = False
    stream: TextIO | None = None
    error_prefix: str = ""


@contextlib.contextmanager
def session(
    task: Task,
    records: Sequence[FastaRecord],
    outdir: Path,
    bad_records: Sequence[RecordError] = (),
    options: RunOptions = RunOptions(),
    where: str = "",
) -> Iterator[Session]:
    """Open a run in ``outdir``: the log, stale temporaries removed, the summary and progress started and the
    records sorted into rows and ``todo``; on the way out (an exception too) progress and summary are closed
    and the final line logged."""
    started = time.perf_counter()
    order = {r.id: r.index for r in records} | {e.id: e.index for e in bad_records}
    with run_log(outdir / f"{task.name}.log") as log:
        log.info(f"{task.name} {options.label}{where}: {len(records)} records, {len(bad_records)} invalid, max "
                 f"tokens per batch {options.max_tokens}{', overwrite' if options.overwrite else ''}")
        stale = remove_stale_temporaries(outdir)
        if stale:
            log.info(f"removed {stale} temporary files left by an interrupted run")
        summary = Summary(outdir / SUMMARY_FILE, (*BASE_COLUMNS, *task.columns, *TAIL_COLUMNS), order)
        progress = Progress(len(records) + len(bad_records), log, options.quiet, options.stream, desc=task.name,
                            error_prefix=options.error_prefix)
        run = Session(task, outdir, log, summary, progress, DoneMarkers(outdir, task.name))
        try:
            run.begin(records, bad_records, options.overwrite)
            yield run
        finally:
            progress.close()
            summary.close()
            run.report.seconds = time.perf_counter() - started
            for ids in (run.report.done, run.report.skipped, run.report.failed):
                ids.sort(key=lambda i: order.get(i, math.inf))
            log.info(f"{task.name}: {final_line(task, run.report, outdir)}")


def run_task(
    task: Task,
    records: Sequence[FastaRecord],
    outdir: Path,
    *,
    bad_records: Sequence[RecordError] = (),
    record_errors: tuple[type[BaseException], ...] = (RuntimeError, ValueError, OSError, MemoryError),
    **options: Any,
) -> RunReport:
    """Process ``records`` into ``outdir`` (which must exist) with ``task``; see the module docstring.
    ``options``: the fields of :class:`RunOptions`.

    An exception of ``record_errors`` (out of memory among them) fails only its record; any other is a bug
    and propagates, after ``summary.tsv`` and the log are closed."""
    opts = RunOptions(**options)
    with session(task, records, outdir, bad_records, opts) as run:
        runner = _Run(task, outdir, run.markers, run.summary.add, run.progress, opts.label, run.report,
                      tuple(record_errors))
        for batch in pack_batches(run.todo, task.tokens, opts.max_tokens):
            runner.batch(batch)
    return run.report


def process_batch(
    task: Task,
    records: Sequence[FastaRecord],
    outdir: Path,
    *,
    label: str = "input",
    record_errors: tuple[type[BaseException], ...] = (Exception,),
    log: logging.Logger | None = None,
) -> list[dict[str, Any]]:
    """One batch as a worker of a distributed run does it: the summary row of every record, in order of
    completion. A record already complete in ``outdir`` (a retried batch whose first worker died after
    finishing it) is not redone: its row is the one its marker holds. Every failure (``record_errors``: by
    default anything) becomes a ``failed`` row; nothing is raised, nothing printed but errors on stderr."""
    rows: list[dict[str, Any]] = []
    markers = DoneMarkers(outdir, task.name)
    log = log or _quiet_logger()
    run = _Run(task, outdir, markers, rows.append, Progress(len(records), log, quiet=True), label, RunReport(),
               tuple(record_errors))
    todo = []
    for record in records:
        previous = markers.load(record)
        if previous is None:
            todo.append(record)
        else:
            rows.append(previous)
    if todo:
        run.batch(todo)
    return rows


def _quiet_logger() -> logging.Logger:
    logger = logging.getLogger("esmfold_fast.worker")
    logger.propagate = False
    return logger


def final_line(task: Task, report: RunReport, outdir: Path) -> str:
    total = len(report.done) + len(report.skipped) + len(report.failed)
    parts = [f"{task.verb} {len(report.done)}"]
    if report.skipped:
        parts.append(f"skipped {len(report.skipped)} already complete")
    if report.failed:
        parts.append(f"failed {len(report.failed)}")
    return (f"{', '.join(parts)} of {total} record{'s' if total != 1 else ''} in "
            f"{report.seconds:.1f} s; outputs and {SUMMARY_FILE} in {outdir}")
