"""FASTA input for folding: read with Biopython, validate every record, report problems in one line.

Two kinds of failure are kept apart:

* file-level problems (missing, unreadable, empty or binary file, text without a ``>`` header) raise
  :class:`FastaError`: nothing in the file can be trusted, so nothing is folded;
* record-level problems (empty record, letters outside the amino-acid alphabet, duplicate id,
  sequence over the length limit) become :class:`RecordError` entries next to the good records, so
  one bad record never stops the others.

A sequence may hold several chains separated by ``':'`` (ESMFold's multimer convention); letters are
case-insensitive and one trailing ``'*'`` (a stop codon marker many tools append) is tolerated.
"""

from __future__ import annotations

import io
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

# 20 standard amino acids, X (unknown), B (D/N), Z (E/Q), U (selenocysteine), O (pyrrolysine).
# The model encodes everything but the 20 standard letters as X, as fair-esm's ESMFold does.
AMINO_ACID_LETTERS = frozenset("ACDEFGHIKLMNPQRSTVWYXBZUO")
CHAIN_SEPARATOR = ":"
DEFAULT_MAX_LENGTH = 2700
# Longest file-name stem derived from a record id; leaves room for ".scores.json" under the
# common 255-byte file-name limit.
MAX_ID_LENGTH = 200

_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class FastaError(ValueError):
    """A problem with the FASTA file as a whole; the message is one line naming the file."""


@dataclass(frozen=True)
class FastaRecord:
    """One valid record.

    ``id`` is safe as a file-name stem and unique within the file (case-insensitively, so outputs
    cannot overwrite each other on case-insensitive file systems either); ``header`` is the original
    header line without ``>``; ``sequence`` is upper case, without the trailing ``'*'``, chains
    joined by ``':'``; ``index`` is the 1-based position of the record in the file.
    """

    id: str
    header: str
    sequence: str
    index: int

    @property
    def chains(self) -> list[str]:
        return self.sequence.split(CHAIN_SEPARATOR)

    @property
    def num_residues(self) -> int:
        """Residues summed over chains (separators and linkers not counted)."""
        return len(self.sequence) - self.sequence.count(CHAIN_SEPARATOR)


@dataclass(frozen=True)
class RecordError:
    """A record that was skipped; ``message`` is one line naming the file and the record."""

    index: int
    id: str
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass
class FastaContents:
    """The good records of a file plus one :class:`RecordError` per bad record, in file order."""

    path: str
    records: list[FastaRecord] = field(default_factory=list)
    errors: list[RecordError] = field(default_factory=list)


def safe_id(raw_id: str, index: int) -> str:
    """Turn a record id into a file-name stem: no path separators, no leading dot, bounded length.

    Runs of characters outside ``[A-Za-z0-9._-]`` become one ``'_'`` (``sp|P69905|HBA_HUMAN`` ->
    ``sp_P69905_HBA_HUMAN``); an id with nothing usable left becomes ``record_<index>``.
    """
    # Dots and underscores are trimmed at both ends: no hidden files, no "." or "..", no
    # "../" remnants, no trailing dot (which some file systems drop).
    stem = _UNSAFE_ID_CHARS.sub("_", raw_id).strip("._")
    stem = stem[:MAX_ID_LENGTH].rstrip("._")
    return stem or f"record_{index}"


STDIN = "-"


def read_fasta(path: str | os.PathLike, max_length: int | None = DEFAULT_MAX_LENGTH) -> FastaContents:
    """Read and validate ``path`` (``"-"``: standard input, named ``<stdin>`` in messages).

    Returns the valid records and the per-record errors. Raises :class:`FastaError` for a problem
    with the whole file. ``max_length`` bounds the residues of one record summed over its chains
    (None: no bound).
    """
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if str(path) == STDIN:
        path, text = "<stdin>", _decode(_stdin_bytes(), "<stdin>")
    else:
        text = _read_text(Path(path))
    _check_starts_with_header(text, path)
    contents = FastaContents(path=str(path))
    seen: dict[str, tuple[int, str]] = {}  # case-folded safe id -> (record index, raw id)
    for index, (header, raw_id, raw_seq) in enumerate(_parse(text, path), start=1):
        label = f"{path}: record {index} {raw_id!r}" if raw_id else f"{path}: record {index} (no id)"
        problem = _sequence_problem(raw_seq, max_length)
        stem = safe_id(raw_id, index)
        if problem is None:
            first = seen.get(stem.casefold())
            if first is not None:
                problem = _duplicate_message(raw_id, stem, first)
        if problem is not None:
            contents.errors.append(RecordError(index, stem, f"{label}: {problem}"))
            continue
        seen[stem.casefold()] = (index, raw_id)
        contents.records.append(FastaRecord(stem, header, _normalise(raw_seq), index))
    return contents


def _read_text(path: Path) -> str:
    """The file's text; every way the file itself can be unusable becomes one :class:`FastaError`."""
    if not path.exists():
        raise FastaError(f"{path}: no such file")
    if path.is_dir():
        raise FastaError(f"{path}: is a directory, not a FASTA file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise FastaError(f"{path}: cannot read ({err.strerror or err})") from err
    return _decode(data, path)


def _stdin_bytes() -> bytes:
    stream = getattr(sys.stdin, "buffer", None)
    return stream.read() if stream is not None else sys.stdin.read().encode()


def _decode(data: bytes, path) -> str:
    if not data.strip():
        raise FastaError(f"{path}: empty file, no FASTA records")
    if b"\0" in data:
        raise FastaError(f"{path}: binary file (NUL bytes), not FASTA text")
    try:
        return data.decode("utf-8-sig")  # tolerate a byte-order mark written by some editors
    except UnicodeDecodeError as err:
        raise FastaError(
            f"{path}: not UTF-8/ASCII text (undecodable byte at offset {err.start}), not FASTA"
        ) from err


def _check_starts_with_header(text: str, path) -> None:
    """Text before the first ``>`` would be silently lost or misread: refuse the file."""
    for lineno, line in enumerate(io.StringIO(text), start=1):
        if not line.strip():
            continue
        if line.startswith(">"):
            return
        if ">" not in text:
            raise FastaError(f"{path}: no FASTA header line starting with '>'")
        raise FastaError(f"{path}: line {lineno}: text before the first '>' header")


def _parse(text: str, path):
    """Yield ``(header, id, sequence)`` per record through ``Bio.SeqIO``."""
    from Bio import SeqIO

    try:
        for rec in SeqIO.parse(io.StringIO(text), "fasta"):
            yield rec.description, rec.id, str(rec.seq)
    except ValueError as err:  # Biopython's messages span lines; keep the first
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FastaError(f"{path}: not valid FASTA ({first})") from err


def _sequence_problem(raw: str, max_length: int) -> str | None:
    """Why ``raw`` cannot be folded, or ``None`` when it can."""
    seq = raw.strip().upper()
    if seq.endswith("*"):
        seq = seq[:-1]
    if not seq:
        return "empty sequence"
    bad = sorted({c for c in seq if c not in AMINO_ACID_LETTERS and c != CHAIN_SEPARATOR})
    if bad:
        where = [i + 1 for i, c in enumerate(seq) if c in bad]
        shown = ", ".join(map(str, where[:5])) + (", ..." if len(where) > 5 else "")
        letters = "".join(bad)
        return (
            f"invalid letters {letters!r} at position {shown} (allowed: 20 amino acids, X, B, Z, U, O, "
            f"':' between chains, one trailing '*')"
        )
    chains = seq.split(CHAIN_SEPARATOR)
    empty = [i + 1 for i, c in enumerate(chains) if not c]
    if empty:
        return f"empty chain (chain {', '.join(map(str, empty))} of {len(chains)}; check the ':' separators)"
    total = sum(len(c) for c in chains)
    if max_length is not None and total > max_length:
        return f"{total} residues exceed the limit of {max_length} (--max-length)"
    return None


def _normalise(raw: str) -> str:
    seq = raw.strip().upper()
    return seq[:-1] if seq.endswith("*") else seq


def _duplicate_message(raw_id: str, stem: str, first: tuple[int, str]) -> str:
    first_index, first_raw = first
    if first_raw == raw_id:
        return f"duplicate id (same as record {first_index}); outputs would overwrite each other"
    return (
        f"id gives the same output name {stem!r} as record {first_index} {first_raw!r}; "
        f"outputs would overwrite each other"
    )
