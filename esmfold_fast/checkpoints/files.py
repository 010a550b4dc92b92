"""Reading checkpoint files safely, finding them in the local caches, and copying them into a model.

Never unpickles arbitrary objects (``weights_only=True`` with an allow-list: fair-esm's
``argparse.Namespace`` and, when omegaconf is installed, the OmegaConf containers the released
``esmfold_3B_v1.pt`` pickles its config as), and turns every failure into a :class:`CheckpointError`
whose one-line message names the file. Loading never downloads: hub names resolve from the local
Hugging Face cache through huggingface_hub, fair-esm names from the torch hub cache. Only the
``download_*`` functions fetch anything, into those same caches, and only
:mod:`esmfold_fast.pretrained` calls them, when asked (``download=True``).

Lean loading: the model is built on the meta device in its final dtypes and given storage on its final
device (:func:`build_empty`); the checkpoint file is memory-mapped, never read whole, and every tensor
is copied straight into its parameter (cast there) as a :class:`StoredTensor`, whose mapped pages are
then handed back to the kernel (``madvise``; a ``torch.load`` mapping is recognised through Linux's
``/proc/self/maps``). Pages of a mapping count in the resident set while they are mapped, so without
that a load would peak at the model plus the whole file (2x for fp32, 3x for an fp16 LM read from an
fp32 file); with it the peak is the model plus one 8 MB piece. A legacy (non-zip) ``.pt`` cannot be
mapped and is read whole.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import mmap
import os
import struct
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


def torch_load(path: str | os.PathLike) -> tuple[object, bool]:
    """``torch.load`` with ``weights_only=True`` -> (the object, whether its tensors are memory-mapped:
    they are when the file is in the zip format, the default since torch 1.6)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with torch.serialization.safe_globals(_allowed_globals()):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True), True
        except RuntimeError as err:
            if "mmap" not in str(err) and "zip" not in str(err):
                raise _load_error(path, err) from err
        except Exception as err:  # truncated zip, bad pickle, disallowed global ...
            raise _load_error(path, err) from err
        try:  # legacy (non-zip) serialisation cannot be memory-mapped: read whole
            return torch.load(path, map_location="cpu", weights_only=True), False
        except Exception as err:
            raise _load_error(path, err) from err


# ----------------------------------------------------------------------------------------------
# tensors of a mapped file, copied one at a time
# ----------------------------------------------------------------------------------------------

_MADV_DONTNEED = 4  # Linux and macOS


def _libc_madvise() -> Callable | None:
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):  # no libc to ask (Windows): pages stay until the mapping goes
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return madvise


_MADVISE = _libc_madvise()


def release_pages(tensor: torch.Tensor) -> None:
    """Drop the resident pages of a tensor that is a view of a private, read-only file mapping.

    They are clean copies of the file, so the kernel reads them again if they are touched later (by a
    tensor sharing them, or a page straddling two tensors); nothing is lost. Must never be called on
    anonymous memory, whose pages would read back as zeros.
    """
    if tensor.is_contiguous():
        start, nbytes = tensor.data_ptr(), tensor.numel() * tensor.element_size()
    else:
        storage = tensor.untyped_storage()
        start, nbytes = storage.data_ptr(), storage.nbytes()
    if _MADVISE is None or nbytes == 0:
        return
    page = start // mmap.PAGESIZE * mmap.PAGESIZE
    _MADVISE(page, start + nbytes - page, _MADV_DONTNEED)


# A mapped tensor is copied this many bytes at a time, each piece's pages given back before the next is
# read: the transient cost is one piece, not the largest tensor (26 MB for a 650M layer, 105 MB for 3B).
COPY_PIECE_BYTES = 8 << 20


class StoredTensor:
    """A checkpoint tensor not copied yet: a view of the file's memory mapping (``mapped``), or of a
    file read whole (legacy ``torch.save`` format). :meth:`copy_to` puts it into its parameter in the
    parameter's dtype and device, and gives a mapped tensor's pages back as it goes."""

    __slots__ = ("tensor", "mapped")

    def __init__(self, tensor: torch.Tensor, mapped: bool) -> None:
        self.tensor = tensor
        self.mapped = mapped

    @property
    def shape(self) -> torch.Size:
        return self.tensor.shape

    def copy_to(self, target: torch.Tensor) -> None:
        src = self.tensor
        if not self.mapped:
            target.copy_(src)
        elif not (src.is_contiguous() and target.is_contiguous()):
            target.copy_(src)
            release_pages(src)
        else:
            flat_src, flat_dst = src.view(-1), target.view(-1)
            step = max(1, COPY_PIECE_BYTES // src.element_size())
            for i in range(0, flat_src.numel(), step):
                piece = flat_src[i : i + step]
                flat_dst[i : i + step].copy_(piece)
                release_pages(piece)


# A state-dict value: a checkpoint's tensors are StoredTensors, a model's in memory (from_transformers) plain.
Weight = Union[torch.Tensor, StoredTensor]


def as_tensor(value: Weight) -> torch.Tensor:
    """The values of a state-dict entry (for the few checks that read them before the copy)."""
    return value.tensor if isinstance(value, StoredTensor) else value


def _file_mappings(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of ``path``, from Linux's ``/proc/self/maps`` (none elsewhere)."""
    target = str(path.resolve())
    try:
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target:
            low, high = fields[0].split("-")
            ranges.append((int(low, 16), int(high, 16)))
    return ranges


def stored_tensors(state: Mapping, mapped: bool, path: Path) -> dict[str, StoredTensor]:
    """A state dict ``torch.load`` gave (``mapped``: with ``mmap=True``) as :class:`StoredTensor`. A tensor
    counts as mapped only where its storage lies inside a mapping of ``path``: whatever torch copied instead
    is anonymous memory, whose pages must never be handed back."""
    ranges = _file_mappings(path) if mapped else []
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: {key} is a {type(value).__name__}, not a tensor")
        storage = value.untyped_storage()
        start, end = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
        out[key] = StoredTensor(value, any(low <= start and end <= high for low, high in ranges))
    return out


# safetensors' dtype names (https://github.com/huggingface/safetensors, format.md).
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip


def _safetensors_header(path: Path, size: int) -> tuple[dict, int]:
    """The JSON header (name -> dtype, shape, data_offsets) and where the data starts; checks that every
    tensor lies inside the file, so a truncated file fails here, naming itself."""
    with open(path, "rb") as f:
        head = f.read(8)
        (n,) = struct.unpack("<Q", head) if len(head) == 8 else (size,)
        if 8 + n > size:
            raise CheckpointError(f"{path}: cannot read safetensors (file shorter than its header)")
        try:
            header = json.loads(f.read(n))
        except ValueError as err:
            raise CheckpointError(f"{path}: cannot read safetensors (invalid header: {err})") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: cannot read safetensors (the header is not a JSON object)")
    header.pop("__metadata__", None)
    for name, entry in header.items():
        try:
            begin, end = entry["data_offsets"]
            dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
            numel = math.prod(int(d) for d in entry["shape"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: cannot read safetensors (bad header entry {name}: {err!r})") from err
        if dtype is None:
            raise CheckpointError(f"{path}: {name} has dtype {entry['dtype']}, which torch cannot hold")
        if end - begin != numel * dtype.itemsize or not 0 <= begin <= end <= size - 8 - n:
            raise CheckpointError(f"{path}: cannot read safetensors ({name} lies outside the file: truncated?)")
    return header, 8 + n


def read_safetensors(path: Path) -> dict[str, StoredTensor]:
    """Every tensor of a ``.safetensors`` file as a view of one private memory mapping of it."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    size = path.stat().st_size
    header, data_start = _safetensors_header(path, size)
    if not header:
        return {}
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
    data = torch.empty(0, dtype=torch.uint8).set_(storage)
    out = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        raw = data[data_start + begin : data_start + end]
        dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
        aligned = (data_start + begin) % dtype.itemsize == 0  # the format does not promise it; writers align
        raw = raw if aligned else raw.clone()  # a copy is anonymous memory: its pages must not be released
        out[name] = StoredTensor(raw.view(dtype).view(entry["shape"]), mapped=aligned)
    return out


def load_state_dict_file(path: str | os.PathLike) -> dict[str, StoredTensor]:
    """Read a ``.safetensors`` or ``.bin``/``.pt`` state dict (memory-mapped where the format allows)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    state, mapped = torch_load(path)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    return stored_tensors(state, mapped, path)


def fair_esm_file(path: Path, what: str) -> tuple[dict[str, StoredTensor], object]:
    """A fair-esm ``{"cfg": {"model": cfg}, "model": state_dict}`` file -> (state dict, cfg["model"])."""
    data, mapped = torch_load(path)
    if not isinstance(data, Mapping) or not isinstance(data.get("model"), Mapping) or "cfg" not in data:
        raise CheckpointError(f"{path}: not a fair-esm {what} checkpoint (expected {{'cfg': ..., 'model': ...}})")
    cfg = data["cfg"]
    model_cfg = cfg.get("model") if isinstance(cfg, Mapping) else getattr(cfg, "model", None)
    if model_cfg is None:
        raise CheckpointError(f"{path}: no cfg['model'] in the checkpoint (not a fair-esm {what} file)")
    return stored_tensors(data["model"], mapped, path), model_cfg


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


def transformers_directory(directory: str | os.PathLike) -> tuple[dict, dict[str, StoredTensor], str]:
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
    state: dict[str, StoredTensor] = {}
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
# downloads: only on request (esmfold_fast.pretrained with download=True), into the caches above
# ----------------------------------------------------------------------------------------------

# What a transformers checkpoint needs from a hub repo, safetensors first: the repos also hold TF / Flax
# weights and tokenizer files this package never reads, and one weight format is enough.
HUB_DOWNLOAD_PATTERNS: tuple[tuple[str, ...], ...] = (
    ("config.json", "model.safetensors", "model-*.safetensors", "model.safetensors.index.json"),
    ("config.json", "pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json"),
)


def download_torch_hub_file(url: str) -> Path:
    """Fetch ``url`` into the torch hub cache under its own file name (as fair-esm's
    ``torch.hub.load_state_dict_from_url`` does) and return the path. torch writes a temporary file
    and renames it, so an interrupted download leaves no partial checkpoint behind."""
    directory = torch_hub_checkpoint_dir()
    path = directory / url.rsplit("/", 1)[-1]
    directory.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), progress=True)
    except Exception as err:  # HTTP 404, no network, disk full ...
        raise CheckpointError(f"{url}: download to {path} failed ({first_line(err)})") from err
    return path


def download_hf_snapshot(name: str, revision: str | None = None) -> Path:
    """Fetch hub model ``name`` (``org/model``) into the Hugging Face cache: ``config.json`` and one weight
    format (safetensors if the repo has it, else ``pytorch_model.bin``), and return the snapshot directory."""
    import huggingface_hub

    if name.count("/") != 1 or name.startswith("/") or name.endswith("/"):
        raise CheckpointError(f"{name!r} is not a hub model name of the form 'org/model'")
    for patterns in HUB_DOWNLOAD_PATTERNS:
        try:
            snapshot = Path(huggingface_hub.snapshot_download(name, revision=revision, allow_patterns=list(patterns)))
        except Exception as err:  # unknown repo, gated repo, no network ...
            raise CheckpointError(f"{name}: download from the Hugging Face hub failed ({first_line(err)})") from err
        try:
            transformers_weight_files(snapshot)
        except CheckpointError:
            continue  # this format is not in the repo: try the next
        return snapshot
    raise CheckpointError(f"{name}: the hub repo has no {' or '.join(TRANSFORMERS_WEIGHT_FILES)}")


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
    state_dict: Mapping[str, Weight],
    source: str | os.PathLike,
    ignore_missing: Iterable[str] = (),
) -> None:
    """Copy ``state_dict`` into ``module`` strictly, one tensor at a time, each cast to its parameter's dtype
    on its device; a mismatch raises naming ``source`` and the keys before anything is copied.

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
            value = state_dict.get(key)
            if isinstance(value, StoredTensor):
                value.copy_to(target)
            elif value is not None:
                target.copy_(value)


def _preview(keys: list[str], n: int = 6) -> str:
    shown = ", ".join(keys[:n])
    return f"[{shown}{', ...' if len(keys) > n else ''}] ({len(keys)} in all)"


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
