"""fair-esm's pretrained entry points (``esm.pretrained.*``), loading this package's models.

    from esmfold_fast import pretrained
    model = pretrained.esmfold_v1()                          # an esmfold_fast.esmfold.ESMFold
    esm2, alphabet = pretrained.esm2_t33_650M_UR50D()        # (esmfold_fast.esm2.ESM2, Alphabet)

Each function returns what fair-esm's function of the same name returns and takes keyword arguments of
``ESMFold.from_pretrained`` / ``ESM2.from_pretrained`` (``device``, ``dtype``, ``backend``, ...) plus
``download``. The weights come from whichever local cache has them, tried in this order:

1. the torch hub cache (``$TORCH_HOME/hub/checkpoints``, where fair-esm keeps its downloads): the
   fair-esm ``.pt`` below; an ESMFold file also needs its ESM-2 language model file there, and an ESM-2
   file is joined by its ``-contact-regression.pt`` if present (without it, contacts are unavailable);
2. the Hugging Face cache (``HF_HUB_CACHE``), transformers layout, where the model is on the hub.

| function | fair-esm file(s) in the torch hub cache | Hugging Face repo |
|---|---|---|
| ``esm2_t6_8M_UR50D`` ... ``esm2_t48_15B_UR50D`` | ``<name>.pt`` (+ ``<name>-contact-regression.pt``) | ``facebook/<name>`` |
| ``esmfold_v0`` | ``esmfold_3B_v0.pt`` + ``esm2_t36_3B_UR50D.pt`` | none |
| ``esmfold_v1`` | ``esmfold_3B_v1.pt`` + ``esm2_t36_3B_UR50D.pt`` | ``facebook/esmfold_v1`` |
| ``esmfold_structure_module_only_8M`` | ``<name>.pt`` + ``esm2_t6_8M_UR50D_500K.pt`` | none |
| ``esmfold_structure_module_only_8M_270K`` | ``<name>.pt`` + ``esm2_t6_8M_UR50D.pt`` | none |
| ``esmfold_structure_module_only_35M`` | ``<name>.pt`` + ``esm2_t12_35M_UR50D_500K.pt`` | none |
| ``esmfold_structure_module_only_35M_270K`` | ``<name>.pt`` + ``esm2_t12_35M_UR50D.pt`` | none |
| ``esmfold_structure_module_only_150M`` | ``<name>.pt`` + ``esm2_t30_150M_UR50D_500K.pt`` | none |
| ``esmfold_structure_module_only_150M_270K`` | ``<name>.pt`` + ``esm2_t30_150M_UR50D_270K.pt`` | none |
| ``esmfold_structure_module_only_650M`` | ``<name>.pt`` + ``esm2_t33_650M_UR50D.pt`` | none |
| ``esmfold_structure_module_only_650M_270K`` | ``<name>.pt`` + ``esm2_t33_650M_270K_UR50D.pt`` | none |
| ``esmfold_structure_module_only_3B`` | ``<name>.pt`` + ``esm2_t36_3B_UR50D.pt`` | none |
| ``esmfold_structure_module_only_3B_270K`` | ``<name>.pt`` + ``esm2_t36_3B_UR50D_500K.pt`` | none |
| ``esmfold_structure_module_only_15B`` | ``<name>.pt`` + ``esm2_t48_15B_UR50D.pt`` | none |

The language model of an ESMFold file is the one fair-esm's ``esm_registry`` loads for the ``esm_type``
the file's config names (:data:`~esmfold_fast.checkpoints.esmfold.FAIR_ESM_LM_FOR_ESM_TYPE`, fair-esm's
own naming kept); the table shows the ``esm_type`` each structure-module-only file is expected to carry
(``esm2_<size>``). The structure-module-only models are in fair-esm's repository after its 2.0.0 release
(2.0.0 on PyPI has only ``esmfold_v0`` / ``esmfold_v1``); their files are at the same URLs.

Nothing is downloaded unless asked: with the files absent a function raises one
:class:`~esmfold_fast.checkpoints.CheckpointError` naming them and where they go. ``download=True``
(the CLI's ``--download``, through :func:`ensure_local`) fetches what is missing into the same caches
first: from the Hugging Face hub where the model is there, else from fair-esm's URLs
(``https://dl.fbaipublicfiles.com/fair-esm/models/<name>.pt``), and completes a fair-esm set that is
partly there (an ESMFold file without its language model) from fair-esm's URLs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

import torch

from .checkpoints.esmfold import esm2_name_for, fair_esm_lm_name
from .checkpoints.files import (
    FAIR_ESM_MODEL_URL,
    FAIR_ESM_REGRESSION_URL,
    HUB_MODEL_FILES,
    TRANSFORMERS_WEIGHT_FILES,
    CheckpointError,
    download_hf_snapshot,
    download_torch_hub_file,
    resolve_hf_snapshot,
    resolve_torch_hub_checkpoint,
    torch_hub_checkpoint_dir,
)

if TYPE_CHECKING:
    from .alphabet import Alphabet
    from .esm2 import ESM2
    from .esmfold import ESMFold

Kind = Literal["esmfold", "esm2"]


# ----------------------------------------------------------------------------------------------
# the name table
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pretrained:
    """One pretrained model: its entry point's name, what it is, and where its files are found."""

    name: str  # the entry point (fair-esm's function name): esmfold_v1, esm2_t6_8M_UR50D
    kind: Kind
    fair_esm: str  # stem of fair-esm's file in the torch hub cache: esmfold_3B_v1
    hub: str | None  # the Hugging Face repo (transformers layout), None where there is none
    lm: str | None = None  # ESMFold: the ESM-2 file the fair-esm file is expected to need beside it
    doc: str = ""

    @property
    def fair_esm_file(self) -> str:
        return f"{self.fair_esm}.pt"

    def fair_esm_files(self, esm_path: str | os.PathLike | None = None) -> list[str]:
        """The files the fair-esm route needs in the torch hub cache (the LM not, when ``esm_path`` names it)."""
        files = [self.fair_esm_file]
        if self.lm is not None and esm_path is None:
            files.append(f"{self.lm}.pt")
        return files

    def optional_files(self) -> list[str]:
        """Files the fair-esm route reads when present: an ESM-2 model's contact regression."""
        return [f"{self.fair_esm}-contact-regression.pt"] if self.kind == "esm2" else []


def _url(file_name: str) -> str:
    """fair-esm's download URL of a file in its torch hub layout."""
    if file_name.endswith("-contact-regression.pt"):
        return FAIR_ESM_REGRESSION_URL.format(name=file_name[: -len("-contact-regression.pt")])
    return FAIR_ESM_MODEL_URL.format(name=file_name[: -len(".pt")])


_ESM2_DOCS = {
    "esm2_t6_8M_UR50D": "6 layer ESM-2 model with 8M params, trained on UniRef50.",
    "esm2_t12_35M_UR50D": "12 layer ESM-2 model with 35M params, trained on UniRef50.",
    "esm2_t30_150M_UR50D": "30 layer ESM-2 model with 150M params, trained on UniRef50.",
    "esm2_t33_650M_UR50D": "33 layer ESM-2 model with 650M params, trained on UniRef50.",
    "esm2_t36_3B_UR50D": "36 layer ESM-2 model with 3B params, trained on UniRef50.",
    "esm2_t48_15B_UR50D": "48 layer ESM-2 model with 15B params, trained on UniRef50.",
}
# fair-esm's structure-module-only ablations (0 folding blocks; Lin et al. 2022, table S1): the LM size, and
# how long it was trained ("_270K": 270K updates, else 500K; the 15B LM was trained to 270K only).
_STRUCTURE_MODULE_ONLY = (
    "8M", "8M_270K", "35M", "35M_270K", "150M", "150M_270K", "650M", "650M_270K", "3B", "3B_270K", "15B",
)  # fmt: skip


def _name_table() -> dict[str, Pretrained]:
    table = [Pretrained(n, "esm2", n, f"facebook/{n}", doc=d) for n, d in _ESM2_DOCS.items()]
    lm_3b = esm2_name_for("esm2_3B")
    table += [
        Pretrained("esmfold_v0", "esmfold", "esmfold_3B_v0", None, lm_3b,
                   "ESMFold v0 (3B ESM-2, 48 folding blocks), the version of the paper (PDB chains until 2020-05)."),
        Pretrained("esmfold_v1", "esmfold", "esmfold_3B_v1", "facebook/esmfold_v1", lm_3b,
                   "ESMFold v1 (3B ESM-2, 48 folding blocks): structure prediction from a single sequence."),
    ]  # fmt: skip
    for size in _STRUCTURE_MODULE_ONLY:
        name = f"esmfold_structure_module_only_{size}"
        updates = "270K" if size.endswith("_270K") or size == "15B" else "500K"
        doc = f"ESMFold baseline with the {size.split('_')[0]} ESM-2 (trained to {updates} updates), 0 folding blocks."
        table.append(Pretrained(name, "esmfold", name, None, esm2_name_for(f"esm2_{size}"), doc))
    return {p.name: p for p in table}


# Entry point name -> Pretrained, in fair-esm's order.
PRETRAINED: dict[str, Pretrained] = _name_table()


def lookup(name: str) -> Pretrained | None:
    """The table entry ``name`` denotes: an entry point's name, its fair-esm file stem (``esmfold_3B_v1``)
    or its Hugging Face repo (``facebook/esmfold_v1``); None for any other name."""
    for entry in PRETRAINED.values():
        if name in (entry.name, entry.fair_esm, entry.hub):
            return entry
    return None


# ----------------------------------------------------------------------------------------------
# finding (or, on request, fetching) the files
# ----------------------------------------------------------------------------------------------


def _hf_snapshot(repo: str | None) -> Path | None:
    """The repo's snapshot in the local Hugging Face cache, if complete (config and weights); never a download."""
    if repo is None:
        return None
    try:
        return resolve_hf_snapshot(repo, HUB_MODEL_FILES)
    except CheckpointError:
        return None


def _missing_message(entry: Pretrained, missing: list[str], esm_path) -> str:
    directory = torch_hub_checkpoint_dir()
    present = [f for f in entry.fair_esm_files(esm_path) if f not in missing]
    urls = ", ".join(_url(f) for f in missing)
    where = f"put {' and '.join(missing)} ({urls}) into {directory}/ (set TORCH_HOME to use another cache)"
    if present:
        where += f"; {', '.join(present)} is there already"
    for optional in entry.optional_files():
        where += f"; for contacts also {optional} ({_url(optional)})"
    if entry.hub is not None:
        from huggingface_hub import constants

        weights = " or ".join(TRANSFORMERS_WEIGHT_FILES[::2])
        where += (
            f", or the Hugging Face repo {entry.hub} (config.json and {weights}) into the Hugging Face cache "
            f"{constants.HF_HUB_CACHE} (set HF_HUB_CACHE to use another)"
        )
    return (
        f"{entry.name}: not in the local caches, and nothing is downloaded unless asked: pass download=True "
        f"(esmfold-fast --download) to fetch it, or {where}"
    )


def _download_fair_esm(entry: Pretrained, esm_path) -> Path:
    """Fetch the fair-esm files of ``entry`` that are not in the torch hub cache. An ESMFold file's language
    model is the one its own config names, so it is read off the file once that is there."""
    directory = torch_hub_checkpoint_dir()
    main = directory / entry.fair_esm_file
    if not main.is_file():
        download_torch_hub_file(_url(entry.fair_esm_file))
    wanted = list(entry.optional_files())  # fair-esm fetches an ESM-2 model's regression with it
    if entry.kind == "esmfold" and esm_path is None:
        lm = fair_esm_lm_name(main)
        wanted += [] if lm is None else [f"{lm}.pt"]
    for file_name in wanted:
        if not (directory / file_name).is_file():
            download_torch_hub_file(_url(file_name))
    return main


def resolve_pretrained(
    name: str, *, download: bool = False, esm_path: str | os.PathLike | None = None
) -> str:
    """What ``ESMFold.from_pretrained`` / ``ESM2.from_pretrained`` should load for pretrained model ``name``
    (see :func:`lookup`): the fair-esm file's path when the torch hub cache has the whole set, else the
    Hugging Face repo name when the Hugging Face cache has it. Absent from both: a :class:`CheckpointError`
    naming the files and where to put them, or with ``download`` they are fetched first (the only path
    that touches the network; it also fetches a present ESM-2 file's missing contact regression)."""
    entry = lookup(name)
    if entry is None:
        raise CheckpointError(f"{name!r} is not a pretrained model name; known: {', '.join(PRETRAINED)}")
    directory = torch_hub_checkpoint_dir()
    missing = [f for f in entry.fair_esm_files(esm_path) if not (directory / f).is_file()]
    if not missing:  # with download, the optional files too (an ESM-2 model's contact regression)
        return str(_download_fair_esm(entry, esm_path) if download else directory / entry.fair_esm_file)
    if _hf_snapshot(entry.hub) is not None:
        return entry.hub
    if not download:
        raise CheckpointError(_missing_message(entry, missing, esm_path))
    # A fair-esm set that is partly there is completed (an ESMFold file lacking only its LM); else the hub
    # repo, one download in the transformers layout, is preferred where there is one.
    if entry.hub is not None and entry.fair_esm_file in missing:
        download_hf_snapshot(entry.hub)
        return entry.hub
    return str(_download_fair_esm(entry, esm_path))


def ensure_local(name_or_path: str | os.PathLike, kind: Kind) -> str:
    """For the CLI's ``--download``: ``name_or_path`` made loadable by ``ESMFold.from_pretrained``
    (``kind="esmfold"``) or ``ESM2.from_pretrained`` (``kind="esm2"``), downloading what is missing.

    A local path (an existing file or directory, or any ``.pt`` name) is returned as it is. A pretrained
    name (entry point, fair-esm file stem or hub repo, see :func:`lookup`) becomes what
    :func:`resolve_pretrained` returns with ``download=True`` (the cached file's path or the hub repo).
    Any other ``org/model`` name is fetched from the Hugging Face hub unless it is cached, and returned;
    another bare name is returned if the torch hub cache has it. Raises :class:`CheckpointError` for a
    pretrained name of the other kind, a bare name nothing is known about, or a failed download.
    """
    text = str(name_or_path)
    if Path(text).exists() or text.endswith(".pt"):
        return text  # a local path: nothing to fetch (a missing one is reported by the loader)
    entry = lookup(text)
    if entry is not None:
        if entry.kind != kind:
            other = "ESMFold" if entry.kind == "esmfold" else "ESM-2"
            raise CheckpointError(f"{text} is an {other} model, not {'ESMFold' if kind == 'esmfold' else 'ESM-2'}")
        return resolve_pretrained(entry.name, download=True)
    if "/" in text:
        if _hf_snapshot(text) is None:
            download_hf_snapshot(text)
        return text
    try:
        resolve_torch_hub_checkpoint(text)  # a custom fair-esm file someone put into the cache
    except CheckpointError:
        known = ", ".join(p.name for p in PRETRAINED.values() if p.kind == kind)
        raise CheckpointError(
            f"{text!r}: not a file, a hub repo (org/model) or a pretrained name --download knows ({known})"
        ) from None
    return text


# ----------------------------------------------------------------------------------------------
# the entry points
# ----------------------------------------------------------------------------------------------


def _esm2_entry(entry: Pretrained) -> Callable[..., "tuple[ESM2, Alphabet]"]:
    def load(
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        lm_head: bool | None = None,
        backend: str | None = None,
        fair_esm_half_rotary: bool = False,
        download: bool = False,
    ) -> "tuple[ESM2, Alphabet]":
        from .esm2 import ESM2

        where = resolve_pretrained(entry.name, download=download)
        model = ESM2.from_pretrained(
            where, device, dtype, lm_head=lm_head, backend=backend, fair_esm_half_rotary=fair_esm_half_rotary
        )
        return model, model.alphabet

    return _named(load, entry, "Returns ``(model, alphabet)``: an eval-mode ESM2 and its Alphabet.")


def _esmfold_entry(entry: Pretrained) -> Callable[..., "ESMFold"]:
    def load(
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        backend: str = "auto",
        esm_path: str | os.PathLike | None = None,
        download: bool = False,
    ) -> "ESMFold":
        from .esmfold import ESMFold

        where = resolve_pretrained(entry.name, download=download, esm_path=esm_path)
        return ESMFold.from_pretrained(where, backend=backend, device=device, dtype=dtype, esm_path=esm_path)

    return _named(load, entry, "Returns an eval-mode ESMFold.")


def _named(load: Callable, entry: Pretrained, returns: str) -> Callable:
    """``load`` under the entry point's name, with a docstring saying what it loads and from where."""
    load.__name__ = load.__qualname__ = entry.name
    files = " + ".join(entry.fair_esm_files())
    hub = f", or {entry.hub} from the Hugging Face cache" if entry.hub else ""
    load.__doc__ = (
        f"{entry.doc}\n\n{returns} Loaded from {files} in the torch hub cache{hub}; keyword arguments as "
        f"``from_pretrained``'s. ``download=True`` fetches missing files first; without it a missing file "
        f"raises CheckpointError."
    )
    return load


esm2_t6_8M_UR50D = _esm2_entry(PRETRAINED["esm2_t6_8M_UR50D"])
esm2_t12_35M_UR50D = _esm2_entry(PRETRAINED["esm2_t12_35M_UR50D"])
esm2_t30_150M_UR50D = _esm2_entry(PRETRAINED["esm2_t30_150M_UR50D"])
esm2_t33_650M_UR50D = _esm2_entry(PRETRAINED["esm2_t33_650M_UR50D"])
esm2_t36_3B_UR50D = _esm2_entry(PRETRAINED["esm2_t36_3B_UR50D"])
esm2_t48_15B_UR50D = _esm2_entry(PRETRAINED["esm2_t48_15B_UR50D"])
esmfold_v0 = _esmfold_entry(PRETRAINED["esmfold_v0"])
esmfold_v1 = _esmfold_entry(PRETRAINED["esmfold_v1"])
esmfold_structure_module_only_8M = _esmfold_entry(PRETRAINED["esmfold_structure_module_only_8M"])
esmfold_structure_module_only_8M_270K = _esmfold_entry(PRETRAINED["esmfold_structure_module_only_8M_270K"])
esmfold_structure_module_only_35M = _esmfold_entry(PRETRAINED["esmfold_structure_module_only_35M"])
esmfold_structure_module_only_35M_270K = _esmfold_entry(PRETRAINED["esmfold_structure_module_only_35M_270K"])
esmfold_structure_module_only_150M = _esmfold_entry(PRETRAINED["esmfold_structure_module_only_150M"])
esmfold_structure_module_only_150M_270K = _esmfold_entry(PRETRAINED["esmfold_structure_module_only_150M_270K"])
esmfold_structure_module_only_650M = _esmfold_entry(PRETRAINED["esmfold_structure_module_only_650M"])
esmfold_structure_module_only_650M_270K = _esmfold_entry(PRETRAINED["esmfold_structure_module_only_650M_270K"])
esmfold_structure_module_only_3B = _esmfold_entry(PRETRAINED["esmfold_structure_module_only_3B"])
esmfold_structure_module_only_3B_270K = _esmfold_entry(PRETRAINED["esmfold_structure_module_only_3B_270K"])
esmfold_structure_module_only_15B = _esmfold_entry(PRETRAINED["esmfold_structure_module_only_15B"])

__all__ = ["PRETRAINED", "Pretrained", "ensure_local", "lookup", "resolve_pretrained", *PRETRAINED]
