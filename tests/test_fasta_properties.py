"""Property-based checks of the FASTA reader: whatever bytes a user hands us, the result is either
records plus one-line record errors, or one FastaError naming the file; never another exception."""

from __future__ import annotations

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esmfold_fast.fasta import AMINO_ACID_LETTERS, FastaError, read_fasta

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

residues = st.text(alphabet=sorted(AMINO_ACID_LETTERS | {c.lower() for c in AMINO_ACID_LETTERS}), min_size=1, max_size=40)
chains = st.lists(residues, min_size=1, max_size=3).map(":".join)
ids = st.text(alphabet=string.ascii_letters + string.digits + "_|.-/ ", min_size=1, max_size=20).filter(str.strip)


@SETTINGS
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_never_crash(tmp_path, data):
    path = tmp_path / "input.fasta"
    path.write_bytes(data)
    try:
        contents = read_fasta(path)
    except FastaError as err:
        message = str(err)
        assert "\n" not in message and str(path) in message
        return
    for error in contents.errors:
        assert "\n" not in error.message and str(path) in error.message
    for record in contents.records:
        assert set(record.sequence) <= AMINO_ACID_LETTERS | {":"}


@SETTINGS
@given(records=st.lists(st.tuples(ids, chains), min_size=1, max_size=6, unique_by=lambda r: r[0].split()[0].lower()))
def test_valid_records_round_trip(tmp_path, records):
    path = tmp_path / "input.fasta"
    text = "".join(f">{rid}\n{seq[:30]}\n{seq[30:]}\n" for rid, seq in records)
    path.write_text(text)
    contents = read_fasta(path)
    # Ids that differ only in characters made safe for file names may collide: those are reported, not lost.
    assert len(contents.records) + len(contents.errors) == len(records)
    by_index = {r.index: r for r in contents.records}
    for index, (_, seq) in enumerate(records, start=1):
        if index in by_index:
            assert by_index[index].sequence == seq.upper()
    stems = [r.id for r in contents.records]
    assert len({s.lower() for s in stems}) == len(stems)  # outputs can never overwrite each other
    assert all("/" not in s and s not in (".", "..") for s in stems)
