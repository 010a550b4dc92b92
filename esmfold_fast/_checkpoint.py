"""Safe, single-copy checkpoint reading shared by the ESM-2 and ESMFold loaders.

Never unpickles arbitrary objects (``weights_only=True`` with an allow-list), memory-maps where the
format allows so a multi-GB file is never held twice, and turns every failure into a
:class:`CheckpointError` whose one-line message names the file.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, truncated or does not match the model."""


def _allowed_globals() -> list:
    # fair-esm pickles its config as an argparse.Namespace; nothing else is allowed through.
    return [argparse.Namespace]


def torch_load(path: str | os.PathLike) -> dict:
    """``torch.load`` with ``weights_only=True``, memory-mapped when the file is in zip format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with torch.serialization.safe_globals(_allowed_globals()):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err) and "zip" not in str(err):
                raise CheckpointError(f"{path}: cannot read checkpoint ({_first_line(err)})") from err
        except Exception as err:  # truncated zip, bad pickle, disallowed global ...
            raise CheckpointError(f"{path}: cannot read checkpoint ({_first_line(err)})") from err
        try:  # legacy (non-zip) serialisation cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"{path}: cannot read checkpoint ({_first_line(err)})") from err


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
            raise CheckpointError(f"{path}: cannot read safetensors ({_first_line(err)})") from err
    state = torch_load(path)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    return dict(state)


def load_into(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str | os.PathLike,
    ignore_missing: Iterable[str] = (),
    ignore_unexpected: Iterable[str] = (),
) -> None:
    """Copy ``state_dict`` into ``module`` strictly; a mismatch raises naming ``source`` and the keys.

    ``ignore_*`` are key suffixes that may be absent or extra (buffers that are recomputed, such as
    rotary ``inv_freq``).
    """
    own = module.state_dict()
    ignore_missing, ignore_unexpected = tuple(ignore_missing), tuple(ignore_unexpected)
    missing = [k for k in own if k not in state_dict and not k.endswith(ignore_missing or ("\0",))]
    unexpected = [k for k in state_dict if k not in own and not k.endswith(ignore_unexpected or ("\0",))]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_preview(unexpected)}")
        raise CheckpointError(f"{source}: checkpoint does not match the model: " + "; ".join(parts))
    for key, target in own.items():
        if key not in state_dict:
            continue
        value = state_dict[key]
        if tuple(value.shape) != tuple(target.shape):
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(value.shape)}, the model expects {tuple(target.shape)}"
            )
    with torch.no_grad():
        for key, target in own.items():
            if key in state_dict:
                target.copy_(state_dict[key])


def _preview(keys: list[str], n: int = 6) -> str:
    shown = ", ".join(keys[:n])
    return f"[{shown}{', ...' if len(keys) > n else ''}] ({len(keys)} in all)"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
