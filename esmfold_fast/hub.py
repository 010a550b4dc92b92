"""Finding checkpoints in the local torch hub and Hugging Face caches; nothing is ever downloaded.

fair-esm names (``esm2_t6_8M_UR50D``) live in the torch hub cache as ``<name>.pt`` (plus
``<name>-contact-regression.pt``), where ``esm.pretrained`` leaves them. Hub names
(``facebook/esm2_t6_8M_UR50D``, ``facebook/esmfold_v1``) live in the Hugging Face cache as
``models--facebook--esm2_t6_8M_UR50D/snapshots/<revision>/``. A missing file raises
:class:`CheckpointError` that says which file to put where.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence, Union

import torch

from ._checkpoint import CheckpointError, load_state_dict_file

FAIR_ESM_MODEL_URL = "https://dl.fbaipublicfiles.com/fair-esm/models/{name}.pt"
FAIR_ESM_REGRESSION_URL = "https://dl.fbaipublicfiles.com/fair-esm/regression/{name}-contact-regression.pt"

# One required file, or a tuple of alternatives of which any one will do.
RequiredFile = Union[str, Sequence[str]]

# transformers' weight file names, preferred first.
TRANSFORMERS_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def torch_hub_checkpoint_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``), as torch.hub uses."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_hub_cache_dir() -> Path:
    """``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub`` (huggingface_hub's order)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def resolve_torch_hub_checkpoint(name: str) -> Path:
    """Path of fair-esm's ``<name>.pt`` in the torch hub cache; ``CheckpointError`` if it is absent."""
    stem = name[:-3] if name.endswith(".pt") else name
    if "/" in stem or not stem:
        raise CheckpointError(f"{name!r} is not a fair-esm model name (e.g. 'esm2_t6_8M_UR50D')")
    directory = torch_hub_checkpoint_dir()
    path = directory / f"{stem}.pt"
    if not path.is_file():
        raise CheckpointError(
            f"{stem}: not in the torch hub cache and nothing is downloaded; put {stem}.pt "
            f"(fair-esm's {FAIR_ESM_MODEL_URL.format(name=stem)}) and, for contacts, "
            f"{stem}-contact-regression.pt ({FAIR_ESM_REGRESSION_URL.format(name=stem)}) into {directory}/ "
            f"(set TORCH_HOME to use another cache)"
        )
    return path


def _alternatives(required: RequiredFile) -> tuple[str, ...]:
    return (required,) if isinstance(required, str) else tuple(required)


def _describe(required_files: Iterable[RequiredFile]) -> str:
    return " and ".join(" or ".join(_alternatives(r)) for r in required_files)


def _has_all(snapshot: Path, required_files: Sequence[RequiredFile]) -> bool:
    # is_file() follows the blob symlinks, so a snapshot whose blob was deleted does not count.
    return all(any((snapshot / f).is_file() for f in _alternatives(r)) for r in required_files)


def resolve_hf_snapshot(
    name: str,
    required_files: Sequence[RequiredFile] = ("config.json",),
    revision: str | None = None,
) -> Path:
    """Snapshot directory of hub model ``name`` (``org/model``) in the local Hugging Face cache.

    Prefers the revision named (a commit hash, or a ref such as ``main``), else ``refs/main``,
    else the newest snapshot that holds every required file. Each entry of ``required_files`` is a
    file name or a tuple of alternatives (``("model.safetensors", "pytorch_model.bin")``).
    """
    if name.count("/") != 1 or name.startswith("/") or name.endswith("/"):
        raise CheckpointError(f"{name!r} is not a hub model name of the form 'org/model'")
    cache = hf_hub_cache_dir()
    repo = cache / ("models--" + name.replace("/", "--"))
    snapshots = repo / "snapshots"
    candidates: list[Path] = []
    ref = revision or "main"
    ref_file = repo / "refs" / ref
    if ref_file.is_file():
        candidates.append(snapshots / ref_file.read_text().strip())
    if revision is not None:
        candidates.append(snapshots / revision)
    elif snapshots.is_dir():
        candidates += sorted(
            (p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True
        )
    for snap in candidates:
        if snap.is_dir() and _has_all(snap, required_files):
            return snap
    where = f"{snapshots}/{revision or '<revision>'}/"
    raise CheckpointError(
        f"{name}: not in the Hugging Face cache ({cache}) and nothing is downloaded; put "
        f"{_describe(required_files)} into {where} (what `huggingface-cli download {name}` leaves "
        f"there on a machine with network), or set HF_HUB_CACHE / HF_HOME to the cache that has them"
    )


def transformers_weight_files(directory: str | os.PathLike) -> list[Path]:
    """The weight files of a ``save_pretrained`` directory, shards included, in load order."""
    directory = Path(directory)
    for fname in TRANSFORMERS_WEIGHT_FILES:
        path = directory / fname
        if not path.is_file():
            continue
        if fname.endswith(".index.json"):
            try:
                weight_map = json.loads(path.read_text())["weight_map"]
            except (ValueError, KeyError) as err:
                raise CheckpointError(f"{path}: not a weight index ({err})") from err
            shards = [directory / s for s in dict.fromkeys(weight_map.values())]
            missing = [str(s) for s in shards if not s.is_file()]
            if missing:
                raise CheckpointError(f"{path}: shard files missing: {', '.join(missing)}")
            return shards
        return [path]
    raise CheckpointError(
        f"{directory}: no weights; expected one of {', '.join(TRANSFORMERS_WEIGHT_FILES)}"
    )


def load_transformers_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read every weight file of a ``save_pretrained`` directory into one (memory-mapped) state dict."""
    state: dict[str, torch.Tensor] = {}
    for path in transformers_weight_files(directory):
        state.update(load_state_dict_file(path))
    return state


def load_transformers_config(directory: str | os.PathLike) -> dict:
    """``config.json`` of a ``save_pretrained`` directory as a dict."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (not a transformers model directory)")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise CheckpointError(f"{path}: invalid JSON ({err})") from err
