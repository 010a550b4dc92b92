"""The two batch tasks :func:`esmfold_fast.batch.run_task` drives: folding with ESMFold and embedding with ESM-2.

Each says how many tokens a record takes in a batch, runs one forward pass over a batch, and writes one
record's files (every file atomically; the done marker comes after them, from the runner).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .fasta import FastaRecord

# torch and the writers are imported where used: the CLI reads this module's defaults before loading torch.

DEFAULT_CHAIN_LINKER = "G" * 25  # ESMFold's poly-G linker between the chains of a complex
DEFAULT_RESIDUE_INDEX_OFFSET = 512


@dataclass(frozen=True)
class FoldOptions:
    """``fold``'s per-record settings. ``formats``: any of ``"pdb"`` and ``"cif"`` (ModelCIF)."""

    num_recycles: int | None = None
    formats: tuple[str, ...] = ("pdb",)
    chain_linker: str = DEFAULT_CHAIN_LINKER
    residue_index_offset: int = DEFAULT_RESIDUE_INDEX_OFFSET
    plots: bool = False


class FoldTask:
    """Fold records with an :class:`~esmfold_fast.esmfold.ESMFold`; per record ``<id>.pdb`` and/or
    ``<id>.cif``, ``<id>.scores.json``, ``<id>.pae.json`` and with ``plots`` ``<id>.plddt.png`` and
    ``<id>.pae.png``."""

    name, verb = "fold", "folded"
    columns = ("chains", "mean_plddt", "ptm", "iptm")
    chunkable = True

    def __init__(self, model, options: FoldOptions = FoldOptions()) -> None:
        self.model, self.options = model, options

    def tokens(self, record: FastaRecord) -> int:
        """Residues plus the linkers between chains: the length the trunk sees."""
        return record.num_residues + len(self.options.chain_linker) * (len(record.chains) - 1)

    @property
    def chunk_size(self) -> int | None:
        return self.model.trunk.chunk_size

    def set_chunk_size(self, chunk_size: int | None) -> None:
        self.model.set_chunk_size(chunk_size)

    def run(self, records: Sequence[FastaRecord]) -> dict[str, Any]:
        import torch

        with torch.inference_mode():  # the writers need no [L, L, C] output: leave them out (GBs at L ~ 2700)
            return self.model.infer(
                [r.sequence for r in records],
                num_recycles=self.options.num_recycles,
                residue_index_offset=self.options.residue_index_offset,
                chain_linker=self.options.chain_linker,
                return_pair_outputs=False,
            )

    def write(self, record: FastaRecord, output: dict[str, Any], i: int, outdir: Path) -> dict[str, Any]:
        from .output import atomic_write, output_to_modelcif, output_to_pdbs, pae_json, scores_json

        # Every text exists before the first file is written: a failing writer leaves no file behind.
        files: dict[str, str | bytes] = {}
        if "pdb" in self.options.formats:
            files[".pdb"] = output_to_pdbs(output, items=[i])[0]
        if "cif" in self.options.formats:
            files[".cif"] = output_to_modelcif(output, name=record.id, items=[i])[0]
        files[".scores.json"] = scores_json(output, i, id=record.id, header=record.header)
        files[".pae.json"] = pae_json(output, i)
        if self.options.plots:
            from .plots import plot_pngs

            files[".plddt.png"], files[".pae.png"] = plot_pngs(output, i, title=record.id)
        for suffix, data in files.items():
            atomic_write(outdir / f"{record.id}{suffix}", data)
        item = json.loads(files[".scores.json"])  # the scores once: computing them again costs the chain TMs
        return {
            "chains": len(record.chains),
            "mean_plddt": item["mean_plddt"],
            "ptm": item["ptm"],
            "iptm": item.get("iptm"),
        }


@dataclass(frozen=True)
class EmbedWriteOptions:
    npz: bool = False  # also write <id>.npz


class EmbedTask:
    """Embed records with an :class:`~esmfold_fast.esm2.ESM2` in fair-esm ``extract.py``'s layout: per record
    ``<id>.pt`` (and with ``npz`` ``<id>.npz``)."""

    name, verb = "embed", "embedded"
    columns: tuple[str, ...] = ()
    chunkable = False
    chunk_size = None

    def __init__(self, model, options, write_options: EmbedWriteOptions = EmbedWriteOptions()) -> None:
        self.model, self.options, self.write_options = model, options, write_options

    def tokens(self, record: FastaRecord) -> int:
        from .embed import tokens_for

        return tokens_for(record, self.options)

    def set_chunk_size(self, chunk_size: int | None) -> None:
        raise RuntimeError("embedding has no chunk size")

    def run(self, records: Sequence[FastaRecord]) -> list[dict[str, Any]]:
        from .embed import embed_batch

        return embed_batch(self.model, records, self.options)  # itself under inference_mode

    def write(self, record: FastaRecord, output: list[dict[str, Any]], i: int, outdir: Path) -> dict[str, Any]:
        from .embed import embedding_bytes, embedding_npz_bytes
        from .output import atomic_write

        files = {".pt": embedding_bytes(output[i])}
        if self.write_options.npz:
            files[".npz"] = embedding_npz_bytes(output[i])
        for suffix, data in files.items():
            atomic_write(outdir / f"{record.id}{suffix}", data)
        return {}


@dataclass(frozen=True)
class TaskSpec:
    """Everything needed to build a task in another process (a Ray actor): the checkpoint and how to load it,
    and the task's options. Plain data, so it pickles; :func:`build_task` loads the model."""

    kind: str  # "fold" or "embed"
    model: str
    device: str | None = None  # None: cuda if available, else cpu
    dtype: str | None = None  # a torch dtype name, e.g. "float32"
    backend: str = "auto"
    esm_path: str | None = None  # fold only: the ESM-2 checkpoint of a fair-esm .pt model
    chunk_size: int | None = None  # fold only
    fold: FoldOptions = FoldOptions()
    embed: Any = None  # an esmfold_fast.embed.EmbedOptions (embed only)
    npz: bool = False  # embed only

    def __post_init__(self) -> None:
        if self.kind not in ("fold", "embed"):
            raise ValueError(f"task kind must be 'fold' or 'embed', got {self.kind!r}")

    def build(self, model=None, check: bool = True):
        """The :class:`FoldTask` or :class:`EmbedTask`, loading the model unless ``model`` is given (see
        :func:`build_task`)."""
        return build_task(self, model, check)


def build_task(spec: TaskSpec, model=None, check: bool = True):
    """The :class:`FoldTask` or :class:`EmbedTask` of ``spec``, loading the model unless ``model`` is given.
    An embedding's options are checked against the model (``ValueError``, one line) unless ``check=False``
    (a driver that only plans batches has no model)."""
    if model is None:
        model = load_model(spec)
    if spec.kind == "fold":
        return FoldTask(model, spec.fold)
    from .embed import EmbedOptions

    options = spec.embed or EmbedOptions()
    if check:
        options.check_model(model)
    return EmbedTask(model, options, EmbedWriteOptions(npz=spec.npz))


def load_model(spec: TaskSpec):
    """Load ``spec``'s checkpoint: an ESMFold for ``fold``, an ESM-2 for ``embed``."""
    import torch

    device = torch.device(spec.device) if spec.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, spec.dtype) if spec.dtype else None
    if spec.kind == "fold":
        from .esmfold import ESMFold

        model = ESMFold.from_pretrained(spec.model, backend=spec.backend, device=device, dtype=dtype,
                                        esm_path=spec.esm_path)
        if spec.chunk_size is not None:
            model.set_chunk_size(spec.chunk_size)
        return model
    from .esm2 import ESM2

    return ESM2.from_pretrained(spec.model, device=device, dtype=dtype, backend=spec.backend)
