"""Reading checkpoint files safely, finding them in the local caches, and copying them into a model.

Never unpickles arbitrary objects (``weights_only=True`` with an allow-list: fair-esm's
``argparse.Namespace`` and, when omegaconf is installed, the OmegaConf containers the released
``esmfold_3B_v1.pt`` pickles its config as), memory-maps where the format allows so a multi-GB file
is never held twice, and turns every failure into a :class:`CheckpointError` whose one-line message
names the file. Nothing is ever downloaded: hub names resolve from the local Hugging Face cache
through huggingface_hub, fair-esm names from the torch hub cache.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence, Union

import torch
from torch import nn
from torch.overrides import TorchFunctionMode


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, truncated or does not match the model."""


# ----------------------------------------------------------------------------------------------
# reading one file
# ----------------------------------------------------------------------------------------------


def _omegaconf_globals() -> list:
    """The classes an OmegaConf ``DictConfig`` pickles; raises ImportError without omegaconf."""
    import collections
    import typing

    from omegaconf import base, dictconfig, listconfig, nodes

    classes = [dictconfig.DictConfig, listconfig.ListConfig, base.ContainerMetadata, base.Metadata, typing.Any]
    classes += [collections.defaultdict]  # the containers' flag tables
    classes += [getattr(nodes, n) for n in dir(nodes) if n.endswith("Node") and isinstance(getattr(nodes, n), type)]
    classes += [base.Node] if hasattr(base, "Node") else []
    return classes + [dict, list, int, float, bool, str]


def _allowed_globals() -> list:
    try:
        return [argparse.Namespace] + _omegaconf_globals()
    except ImportError:
        return [argparse.Namespace]


def _load_error(path: Path, err: BaseException) -> CheckpointError:
    if "omegaconf" in str(err):
        return CheckpointError(
            f"{path}: its config is an OmegaConf object; install omegaconf to read it "
            "(pip install 'esmfold-fast[fair-esm]')"
        )
    return CheckpointError(f"{path}: cannot read checkpoint ({first_line(err)})")


def torch_load(path: str | os.PathLike) -> object:
    """``torch.load`` with ``weights_only=True``, memory-mapped when the file is in zip format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with torch.serialization.safe_globals(_allowed_globals()):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err) and "zip" not in str(err):
                raise _load_error(path, err) from err
        except Exception as err:  # truncated zip, bad pickle, disallowed global ...
            raise _load_error(path, err) from err
        try:  # legacy (non-zip) serialisation cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise _load_error(path, err) from err


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.bin``/``.pt`` state dict (tensors stay memory-mapped)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise CheckpointError(f"{path}: no such checkpoint file")
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:
            raise CheckpointError(f"{path}: cannot read safetensors ({first_line(err)})") from err
    state = torch_load(path)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    return dict(state)


def fair_esm_file(path: Path, what: str) -> tuple[Mapping, object]:
    """A fair-esm ``{"cfg": {"model": cfg}, "model": state_dict}`` file -> (state dict, cfg["model"])."""
    data = torch_load(path)
    if not isinstance(data, Mapping) or not isinstance(data.get("model"), Mapping) or "cfg" not in data:
        raise CheckpointError(f"{path}: not a fair-esm {what} checkpoint (expected {{'cfg': ..., 'model': ...}})")
    cfg = data["cfg"]
    model_cfg = cfg.get("model") if isinstance(cfg, Mapping) else getattr(cfg, "model", None)
    if model_cfg is None:
        raise CheckpointError(f"{path}: no cfg['model'] in the checkpoint (not a fair-esm {what} file)")
    return data["model"], model_cfg


# ----------------------------------------------------------------------------------------------
# transformers save_pretrained directories
# ----------------------------------------------------------------------------------------------

# transformers' weight file names, preferred first.
TRANSFORMERS_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
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
    raise CheckpointError(f"{directory}: no weights; expected one of {', '.join(TRANSFORMERS_WEIGHT_FILES)}")


def transformers_directory(directory: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor], str]:
    """``config.json`` as a dict, every weight file in one (memory-mapped) state dict, and the source
    to name in errors."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (not a transformers model directory)")
    try:
        config = json.loads(path.read_text())
    except ValueError as err:
        raise CheckpointError(f"{path}: invalid JSON ({err})") from err
    files = transformers_weight_files(directory)
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_state_dict_file(file))
    return config, state, ", ".join(str(f) for f in files)


# ----------------------------------------------------------------------------------------------
# local caches
# ----------------------------------------------------------------------------------------------

FAIR_ESM_MODEL_URL = "https://dl.fbaipublicfiles.com/fair-esm/models/{name}.pt"
FAIR_ESM_REGRESSION_URL = "https://dl.fbaipublicfiles.com/fair-esm/regression/{name}-contact-regression.pt"

# One required file, or a tuple of alternatives of which any one will do.
RequiredFile = Union[str, Sequence[str]]


def torch_hub_checkpoint_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``), where fair-esm leaves
    its downloads."""
    return Path(torch.hub.get_dir()) / "checkpoints"


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


def resolve_hf_snapshot(
    name: str, required_files: Sequence[RequiredFile] = ("config.json",), revision: str | None = None
) -> Path:
    """Snapshot directory of hub model ``name`` (``org/model``) in the local Hugging Face cache.

    Looked up with huggingface_hub's ``try_to_load_from_cache`` (local files only: never a download)
    at ``revision`` (a commit hash or a ref; default ``main``). Each entry of ``required_files`` is a
    file name or a tuple of alternatives (``("model.safetensors", "pytorch_model.bin")``); all must be
    there.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    if name.count("/") != 1 or name.startswith("/") or name.endswith("/"):
        raise CheckpointError(f"{name!r} is not a hub model name of the form 'org/model'")
    snapshot: Path | None = None
    for required in required_files:
        found = [try_to_load_from_cache(name, f, revision=revision) for f in _alternatives(required)]
        paths = [Path(p) for p in found if isinstance(p, str)]
        if not paths:
            snapshot = None
            break
        snapshot = paths[0].parent
    if snapshot is not None:
        return snapshot
    wanted = " and ".join(" or ".join(_alternatives(r)) for r in required_files)
    cache = Path(constants.HF_HUB_CACHE)
    where = cache / ("models--" + name.replace("/", "--")) / "snapshots" / (revision or "<revision>")
    raise CheckpointError(
        f"{name}: not in the Hugging Face cache ({cache}) and nothing is downloaded; put {wanted} into "
        f"{where}/ with refs/main naming the revision (what `hf download {name}` leaves there on a machine "
        f"with network), or set HF_HUB_CACHE / HF_HOME to the cache that has them"
    )


def resolve(path: str | os.PathLike, hub_files: Sequence[RequiredFile]) -> tuple[str, Path]:
    """What ``path`` names: ``("dir", directory)``, ``("pt", file)`` for a fair-esm ``.pt``.

    A directory is a transformers ``save_pretrained`` directory, a file (or anything ending in ``.pt``)
    a fair-esm checkpoint, ``org/model`` a hub name in the Hugging Face cache (which must hold
    ``hub_files``), and any other name a fair-esm name in the torch hub cache.
    """
    p = Path(path)
    if p.is_dir():
        return "dir", p
    if p.is_file() or str(path).endswith(".pt"):
        return "pt", p
    if "/" in str(path):
        return "dir", resolve_hf_snapshot(str(path), hub_files)
    return "pt", resolve_torch_hub_checkpoint(str(path))


HUB_MODEL_FILES: tuple[RequiredFile, ...] = ("config.json", TRANSFORMERS_WEIGHT_FILES)


# ----------------------------------------------------------------------------------------------
# building a model to load into, and loading it
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly in ``dtype`` (no float32 copy first)."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


class _NoInit(TorchFunctionMode):
    """Skips ``torch.nn.init`` calls while a model is built on the meta device: meta tensors hold no values,
    and torch runs their random init through Python decompositions. A mode is thread-local, unlike
    patching ``nn.init``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return kwargs["tensor"] if "tensor" in kwargs else args[0]
        return func(*args, **kwargs)


def build_empty(
    make: Callable[[], nn.Module],
    device: torch.device | str | None,
    dtype: torch.dtype | None,
    before_materialize: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    """``make()`` on the meta device, then given uninitialised storage on ``device``: no time or memory
    goes to random init, because every parameter is copied from a checkpoint next. Neither step runs one of
    torch's Python decompositions, whose import (torch._dynamo, sympy) costs about 70 MB of resident memory.

    ``before_materialize`` may still change dtypes (float32 islands of a half model). Buffers that are
    not loaded (lookup tables, rotary frequencies) are refilled by each module's ``reset_buffers()``.
    """
    dtype = dtype or torch.float32
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating point dtype, got {dtype}")
    with default_dtype(dtype), torch.device("meta"), _NoInit():
        model = make()
    if before_materialize is not None:
        before_materialize(model)
    device = torch.device(device) if device is not None else torch.device("cpu")
    # Module.to_empty, but through torch.empty: empty_like of a meta tensor imports torch's symbolic shapes.
    model._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device=device))
    for module in model.modules():
        reset = getattr(module, "reset_buffers", None)
        if callable(reset):
            reset()
    return model


def load_into(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str | os.PathLike,
    ignore_missing: Iterable[str] = (),
) -> None:
    """Copy ``state_dict`` into ``module`` strictly; a mismatch raises naming ``source`` and the keys.

    ``ignore_missing`` are key suffixes that may be absent (buffers with defaults, such as rotary
    ``inv_freq``).
    """
    own = module.state_dict()
    ignore_missing = tuple(ignore_missing) or ("\0",)
    missing = [k for k in own if k not in state_dict and not k.endswith(ignore_missing)]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_preview(unexpected)}")
        raise CheckpointError(f"{source}: checkpoint does not match the model: " + "; ".join(parts))
    for key, target in own.items():
        if key in state_dict and tuple(state_dict[key].shape) != tuple(target.shape):
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(state_dict[key].shape)}, the model expects {tuple(target.shape)}"
            )
    with torch.no_grad():
        for key, target in own.items():
            if key in state_dict:
                target.copy_(state_dict[key])


def _preview(keys: list[str], n: int = 6) -> str:
    shown = ", ".join(keys[:n])
    return f"[{shown}{', ...' if len(keys) > n else ''}] ({len(keys)} in all)"


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
