"""ESM-2 embeddings per record: the computational core of ``esmfold-fast embed``.

This is fair-esm's ``scripts/extract.py`` as pure functions; batching by token budget, resume and
the command line live elsewhere. Per batch of records, :func:`embed_batch` runs one forward of an
:class:`~esmfold_fast.esm2.ESM2` over the padded batch and returns, per record, extract.py's dict:

* ``label``: the record's :attr:`~esmfold_fast.fasta.FastaRecord.id` (the file-name-safe, unique
  id). extract.py's label is the whole header line without ``>``; we use the id because it is
  what the output file is named after;
* ``representations`` {layer: [L, C]} (``"per_tok"``), ``mean_representations`` {layer: [C]}
  (``"mean"``), ``bos_representations`` {layer: [C]} (``"bos"``), ``contacts`` [L, L]
  (``"contacts"``), as extract.py computes them; plus ``logits`` [L, alphabet size] (``"logits"``,
  not in extract.py: the LM head's output at the residue positions, cls and eos dropped, as
  ``per_tok``).

``L`` is the record's length truncated to ``truncation_seq_length`` (1022 by default, as
extract.py: with cls and eos that is the 1024 positions ESM-2 was trained on). Layer keys are
non-negative ints: a negative layer ``i`` is read as ``(i + num_layers + 1) % (num_layers + 1)``
(``-1`` = the last layer, after ``emb_layer_norm_after``; ``0`` = the embeddings), as extract.py.

Every tensor is its own contiguous float32 CPU tensor (never a view into the batch), so
``torch.save`` writes only that record's values and ``torch.load(..., weights_only=True)`` reads it
back. A model run in fp16 / bf16 still gives float32 tensors (the half values, converted exactly);
the mean is then taken in float32, where extract.py averages in the model's dtype.

Embeddings are per single chain: a sequence with ``':'`` (ESMFold's multimer separator) is
rejected with a one-line error naming the record (:func:`record_problem`), as is an empty one or a
character outside the ESM-2 alphabet. Letters are upper-cased first, as everywhere in this project.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, Sequence

import numpy as np
import torch

from .alphabet import STANDARD_TOKENS
from .fasta import FastaContents, RecordError

INCLUDE_CHOICES: tuple[str, ...] = ("mean", "per_tok", "bos", "contacts", "logits")
# The includes that read hidden states (and so need repr_layers).
_REPR_INCLUDES = frozenset({"mean", "per_tok", "bos"})
_RESIDUE_TOKENS = frozenset(t for t in STANDARD_TOKENS if len(t) == 1)


class _Record(Protocol):
    id: str
    sequence: str


@dataclass(frozen=True)
class EmbedOptions:
    """What to compute per record.

    ``repr_layers``: layers whose hidden states are returned (negative counts from the end, as in
    extract.py; checked against the model by :meth:`layers_for`). ``include``: any of ``"mean"``,
    ``"per_tok"``, ``"bos"``, ``"contacts"``, ``"logits"`` (a single name may be given as a str);
    extract.py has no default (``--include`` is required), ours is ``("mean",)``, the
    per-protein embedding most uses want and the smallest output. ``truncation_seq_length``:
    residues kept per record (the rest is dropped before the model sees it); ``None`` keeps all.

    Invalid values raise ``ValueError`` with a one-line message at construction.
    """

    repr_layers: Sequence[int] = (-1,)
    include: Iterable[str] = ("mean",)
    truncation_seq_length: int | None = 1022
    # Normalised forms, filled in by __post_init__.
    _include: frozenset = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        include = (self.include,) if isinstance(self.include, str) else tuple(self.include)
        unknown = sorted({str(x) for x in include} - set(INCLUDE_CHOICES))
        if unknown:
            raise ValueError(f"unknown include {', '.join(map(repr, unknown))}; choose from {', '.join(INCLUDE_CHOICES)}")
        if not include:
            raise ValueError(f"include is empty; choose at least one of {', '.join(INCLUDE_CHOICES)}")
        layers = (self.repr_layers,) if isinstance(self.repr_layers, int) else tuple(self.repr_layers)
        bad = [x for x in layers if isinstance(x, bool) or not isinstance(x, (int, np.integer))]
        if bad:
            raise ValueError(f"repr_layers must be integers, got {bad[0]!r}")
        if not layers and _REPR_INCLUDES & set(include):
            raise ValueError("repr_layers is empty but include asks for representations (mean, per_tok or bos)")
        t = self.truncation_seq_length
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 1):
            raise ValueError(f"truncation_seq_length must be a positive integer or None, got {t!r}")
        object.__setattr__(self, "include", tuple(x for x in INCLUDE_CHOICES if x in include))
        object.__setattr__(self, "repr_layers", tuple(int(x) for x in layers))
        object.__setattr__(self, "_include", frozenset(include))

    def wants(self, name: str) -> bool:
        return name in self._include

    def layers_for(self, num_layers: int) -> tuple[int, ...]:
        """``repr_layers`` normalised for a ``num_layers``-layer model, sorted, unique; ``()`` when no
        include reads hidden states. A layer outside ``-(num_layers + 1) .. num_layers`` raises ``ValueError``."""
        if not (_REPR_INCLUDES & self._include):
            return ()
        for i in self.repr_layers:
            if not -(num_layers + 1) <= i <= num_layers:
                raise ValueError(
                    f"repr layer {i} is out of range for a {num_layers}-layer model "
                    f"(valid: {-(num_layers + 1)} .. {num_layers})"
                )
        return tuple(sorted({(i + num_layers + 1) % (num_layers + 1) for i in self.repr_layers}))

    def check_model(self, model) -> tuple[int, ...]:
        """Check these options against ``model`` (layers in range, contact/LM head present); returns
        :meth:`layers_for` of the model. Raises ``ValueError`` with a one-line message."""
        layers = self.layers_for(model.num_layers)
        if self.wants("contacts") and getattr(model, "contacts_unavailable", None) is not None:
            raise ValueError(f"include 'contacts': {model.contacts_unavailable}")
        if self.wants("logits") and getattr(model, "lm_head", None) is None:
            raise ValueError("include 'logits': this ESM-2 has no LM head (e.g. a transformers EsmModel directory)")
        return layers


def truncated_length(record: _Record, options: EmbedOptions) -> int:
    """Residues of ``record`` the model sees: its length capped at ``options.truncation_seq_length``."""
    n = len(record.sequence)
    t = options.truncation_seq_length
    return n if t is None else min(n, t)


def tokens_for(record: _Record, options: EmbedOptions) -> int:
    """Tokens ``record`` takes in a batch: truncated length + 2 (cls and eos). Does not validate the
    record (see :func:`record_problem`).

    A batch costs ``len(records) * max(tokens_for)`` positions once padded; with ``"contacts"`` the
    attention maps of every layer are kept, ``layers * heads * T^2`` values per record."""
    return truncated_length(record, options) + 2


def record_problem(record: _Record) -> str | None:
    """Why ``record`` cannot be embedded (one line naming it), or ``None`` when it can."""
    seq = record.sequence.upper() if isinstance(record.sequence, str) else None
    if seq is None:
        return f"record {record.id!r}: sequence must be a str, got {type(record.sequence).__name__}"
    if not seq:
        return f"record {record.id!r}: empty sequence"
    if ":" in seq:
        return (
            f"record {record.id!r}: {seq.count(':') + 1} chains (':' separators); embed works on single chains, "
            f"give each chain its own record"
        )
    bad = sorted(set(seq) - _RESIDUE_TOKENS)
    if bad:
        where = seq.index(bad[0]) + 1
        return f"record {record.id!r}: characters {''.join(bad)!r} are not in the ESM-2 alphabet (first at position {where})"
    return None


def embeddable(contents: FastaContents) -> FastaContents:
    """``contents`` with the records ESM-2 cannot take (:func:`record_problem`: complexes, characters outside
    its alphabet) moved to the record errors, each one line naming the file and the record."""
    good, errors = [], list(contents.errors)
    for record in contents.records:
        problem = record_problem(record)
        if problem is None:
            good.append(record)
        else:  # record_problem says "record 'id': ..."; add the file and the record's number
            message = f"{contents.path}: record {record.index} {problem.removeprefix('record ')}"
            errors.append(RecordError(record.index, record.id, message))
    return FastaContents(contents.path, good, sorted(errors, key=lambda e: e.index))


def _own(t: torch.Tensor) -> torch.Tensor:
    """A contiguous float32 CPU copy of ``t`` with storage of its own (never a view into the batch)."""
    return t.detach().to(device="cpu", dtype=torch.float32, memory_format=torch.contiguous_format, copy=True)


def embed_batch(model, records: Sequence[_Record], options: EmbedOptions | None = None) -> list[dict[str, Any]]:
    """One forward of ``model`` (an :class:`~esmfold_fast.esm2.ESM2`) over ``records``, padded into one
    batch; returns extract.py's result dict per record, in order (see the module docstring).

    Raises ``ValueError`` (one line) when the options do not fit the model or a record cannot be
    embedded (:func:`record_problem`: multi-chain, empty, unknown characters); nothing is computed then.
    The model's device and dtype are used as they are; the model is not changed (it should be in eval mode).
    """
    options = EmbedOptions() if options is None else options
    layers = options.check_model(model)
    if not records:
        return []
    for record in records:
        problem = record_problem(record)
        if problem is not None:
            raise ValueError(problem)
    alphabet = model.alphabet
    lengths = [truncated_length(r, options) for r in records]
    tokens = torch.full((len(records), max(lengths) + 2), alphabet.padding_idx, dtype=torch.int64)  # [B, T]
    for i, (record, n) in enumerate(zip(records, lengths)):
        tokens[i, 0] = alphabet.cls_idx
        tokens[i, 1 : n + 1] = torch.tensor([alphabet.tok_to_idx[c] for c in record.sequence.upper()[:n]])
        tokens[i, n + 1] = alphabet.eos_idx
    device = model.embed_tokens.weight.device
    with torch.inference_mode():
        out = model(
            tokens.to(device),
            repr_layers=layers,
            return_contacts=options.wants("contacts"),
            return_logits=options.wants("logits"),
        )
    reps = out["representations"]
    results = []
    for i, (record, n) in enumerate(zip(records, lengths)):
        result: dict[str, Any] = {"label": record.id}
        if options.wants("per_tok"):
            result["representations"] = {k: _own(reps[k][i, 1 : n + 1]) for k in layers}
        if options.wants("mean"):
            result["mean_representations"] = {k: _own(reps[k][i, 1 : n + 1]).mean(0) for k in layers}
        if options.wants("bos"):
            result["bos_representations"] = {k: _own(reps[k][i, 0]) for k in layers}
        if options.wants("contacts"):
            result["contacts"] = _own(out["contacts"][i, :n, :n])
        if options.wants("logits"):
            result["logits"] = _own(out["logits"][i, 1 : n + 1])
        results.append(result)
    return results


def embedding_bytes(result: dict[str, Any]) -> bytes:
    """``torch.save(result)`` as bytes (for an atomic write of ``<label>.pt``); loads with
    ``torch.load(..., weights_only=True)``."""
    buf = io.BytesIO()
    torch.save(result, buf)
    return buf.getvalue()


def npz_arrays(result: dict[str, Any]) -> dict[str, np.ndarray]:
    """The flat arrays of :func:`embedding_npz_bytes`: ``label`` (0-d str array),
    ``representations_<layer>``, ``mean_representations_<layer>``, ``bos_representations_<layer>``,
    ``contacts``, ``logits`` (float32)."""
    arrays: dict[str, np.ndarray] = {"label": np.array(str(result["label"]))}
    for key in ("representations", "mean_representations", "bos_representations"):
        for layer, t in result.get(key, {}).items():
            arrays[f"{key}_{int(layer)}"] = t.detach().cpu().float().numpy()
    for key in ("contacts", "logits"):
        if key in result:
            arrays[key] = result[key].detach().cpu().float().numpy()
    return arrays


def embedding_npz_bytes(result: dict[str, Any]) -> bytes:
    """``result`` as an uncompressed ``.npz`` (keys of :func:`npz_arrays`); loads with
    ``np.load(..., allow_pickle=False)``."""
    buf = io.BytesIO()
    np.savez(buf, **npz_arrays(result))
    return buf.getvalue()


__all__ = [
    "INCLUDE_CHOICES",
    "EmbedOptions",
    "embed_batch",
    "embeddable",
    "embedding_bytes",
    "embedding_npz_bytes",
    "npz_arrays",
    "record_problem",
    "tokens_for",
    "truncated_length",
]
