"""ESMFold checkpoint formats: transformers' ``EsmForProteinFolding`` directories (``config.json`` +
safetensors or ``pytorch_model.bin``, sharded or not) and fair-esm's ``esmfold_3B_v1.pt``, whose config
is pickled (a dict, Namespace, dataclass or OmegaConf ``DictConfig``) and whose language model comes
from the separate ESM-2 checkpoint its ``esm_type`` names."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from ..config import ESM2_SIZES, ESM2Config, ESMFoldConfig, StructureModuleConfig, TrunkConfig
from .esm2 import (
    esm2_config_from_state_dict,
    esm2_config_from_transformers,
    esm2_state_dict_from_transformers,
    load_esm2_state_dict,
    read_fair_esm_esm2,
)
from .files import (
    HUB_MODEL_FILES,
    CheckpointError,
    Weight,
    build_empty,
    fair_esm_file,
    load_into,
    resolve,
    resolve_torch_hub_checkpoint,
    transformers_directory,
)

if TYPE_CHECKING:
    from ..esmfold import ESMFold

# fair-esm's StructureModuleConfig (OpenFold names) -> ours (transformers' names).
_FAIR_ESM_SM_NAMES = {
    "c_s": "sequence_dim", "c_z": "pairwise_dim", "c_ipa": "ipa_dim", "c_resnet": "resnet_dim",
    "no_heads_ipa": "num_heads_ipa", "no_qk_points": "num_qk_points", "no_v_points": "num_v_points",
    "no_blocks": "num_blocks", "no_transition_layers": "num_transition_layers",
    "no_resnet_blocks": "num_resnet_blocks", "no_angles": "num_angles",
}  # fmt: skip


def load_esmfold(
    cls: type["ESMFold"],
    path: str | os.PathLike,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    esm_path: str | os.PathLike | None = None,
) -> "ESMFold":
    """Build ``cls`` from an ESMFold checkpoint in any supported layout (see ``ESMFold.from_pretrained``)."""
    kind, where = resolve(path, HUB_MODEL_FILES)
    if kind == "dir":
        return _load_transformers_dir(cls, where, device, dtype)
    return _load_fair_esm_esmfold(cls, where, device, dtype, esm_path)


def _empty_esmfold(cls, config: ESMFoldConfig, device, dtype) -> "ESMFold":
    device = torch.device(device) if device is not None else torch.device("cpu")

    def final_dtypes(model: "ESMFold") -> None:
        # before the storage exists: float32 islands get the checkpoint's full precision, and an LM that will
        # run in fp16 is never held in float32 on the device
        model.apply_dtype_layout(device)

    return build_empty(lambda: cls(config), device, dtype, before_materialize=final_dtypes)


def _folding_part(model: "ESMFold") -> nn.Module:
    """A view of everything but the LM (same tensors), so the two parts load from their own sources."""
    part = nn.Module()
    for name, child in model.named_children():
        if name != "esm":
            part.add_module(name, child)
    part.esm_s_combine = model.esm_s_combine
    part.register_buffer("af2_to_esm", model.af2_to_esm)
    return part


def _split_lm(sd: Mapping[str, Weight]) -> tuple[dict[str, Weight], dict[str, Weight]]:
    lm = {k[len("esm.") :]: v for k, v in sd.items() if k.startswith("esm.")}
    rest = {k: v for k, v in sd.items() if not k.startswith("esm.")}
    return lm, rest


# ----------------------------------------------------------------------------------------------
# transformers
# ----------------------------------------------------------------------------------------------


def esmfold_config_from_transformers(config: Mapping[str, Any], source: str) -> ESMFoldConfig:
    """Map a transformers ``EsmConfig`` dict (``config.json`` of ``EsmForProteinFolding``)."""
    if not config.get("is_folding_model", config.get("esmfold_config") is not None):
        raise CheckpointError(f"{source}: not an EsmForProteinFolding config (is_folding_model)")
    esm = esm2_config_from_transformers(config, source)
    folding = dict(config.get("esmfold_config") or {})
    # transformers' trunk.chunk_size (default 128) sizes its own unfused attention's chunks; ours are planned
    # from memory by the backend (esmfold_fast.memory), and set_chunk_size is the user's cap.
    folding["trunk"] = {k: v for k, v in dict(folding.get("trunk") or {}).items() if k != "chunk_size"}
    try:
        return ESMFoldConfig.from_dict({**folding, "esm": dataclasses.asdict(esm)})
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: cannot read the ESMFold config ({err})") from err


def esmfold_from_transformers(
    cls: type["ESMFold"],
    raw_config: Mapping[str, Any],
    state: Mapping[str, Weight],
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    sources: tuple[str, str] = ("config", "state dict"),
) -> "ESMFold":
    """Build ``cls`` from transformers' ``EsmForProteinFolding`` config dict and state dict: ``config.json``
    and the weights of a ``save_pretrained`` directory, or ``model.config.to_dict()`` and ``model.state_dict()``
    of a model in memory. ``sources`` name the two in errors."""
    config = esmfold_config_from_transformers(raw_config, sources[0])
    lm_sd, rest = _split_lm(state)
    model = _empty_esmfold(cls, config, device, dtype)
    load_esm2_state_dict(model.esm, esm2_state_dict_from_transformers(lm_sd, lm_head=False), sources[1])
    load_into(_folding_part(model), rest, sources[1])
    return model


def _load_transformers_dir(cls, directory: Path, device, dtype) -> "ESMFold":
    raw_config, state, weights = transformers_directory(directory)
    return esmfold_from_transformers(cls, raw_config, state, device, dtype, (str(directory / "config.json"), weights))


# ----------------------------------------------------------------------------------------------
# fair-esm
# ----------------------------------------------------------------------------------------------


def _is_omegaconf(obj: Any) -> bool:
    return type(obj).__module__.startswith("omegaconf")


def _is_config_like(obj: Any) -> bool:
    return isinstance(obj, (Mapping, argparse.Namespace)) or dataclasses.is_dataclass(obj) or _is_omegaconf(obj)


def _plain_config(cfg: Any, source: Path) -> dict[str, Any]:
    """fair-esm's pickled config (dict, Namespace, dataclass or OmegaConf DictConfig) as nested dicts."""
    if _is_omegaconf(cfg):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True)
    if isinstance(cfg, Mapping):
        return {k: _plain_config(v, source) if _is_config_like(v) else v for k, v in cfg.items()}
    if isinstance(cfg, argparse.Namespace):
        return _plain_config(vars(cfg), source)
    if dataclasses.is_dataclass(cfg):
        return _plain_config(dataclasses.asdict(cfg), source)
    raise CheckpointError(f"{source}: cfg['model'] is a {type(cfg).__name__}, not a config")


def esmfold_config_from_fair_esm(cfg: Mapping[str, Any], esm: ESM2Config, source: Path) -> ESMFoldConfig:
    """fair-esm's ``ESMFoldConfig`` (OpenFold structure-module names) -> :class:`ESMFoldConfig`."""
    cfg = dict(cfg)
    trunk = dict(cfg.pop("trunk", {}) or {})
    sm = {_FAIR_ESM_SM_NAMES.get(k, k): v for k, v in dict(trunk.pop("structure_module", {}) or {}).items()}
    known_sm = {f.name for f in dataclasses.fields(StructureModuleConfig)}
    known_trunk = {f.name for f in dataclasses.fields(TrunkConfig)} - {"structure_module"}
    known_top = {f.name for f in dataclasses.fields(ESMFoldConfig)} - {"esm", "trunk"}
    unknown = [f"structure_module.{k}" for k in sm if k not in known_sm]
    unknown += [f"trunk.{k}" for k in trunk if k not in known_trunk and not k.startswith("_")]
    unknown += [k for k in cfg if k not in known_top and not k.startswith("_")]
    if unknown:
        raise CheckpointError(f"{source}: unknown ESMFold config fields {unknown}")
    try:
        config = ESMFoldConfig(
            esm=esm,
            trunk=TrunkConfig(
                structure_module=StructureModuleConfig(**sm),
                **{k: v for k, v in trunk.items() if k in known_trunk},
            ),
            **{k: v for k, v in cfg.items() if k in known_top},
        )
        config.validate()
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: invalid ESMFold config ({err})") from err
    return config


# fair-esm's ``esm_registry`` (esm/esmfold/v1/esmfold.py): the ESM-2 checkpoint each ``esm_type`` loads. Copied
# as it is, names included: "esm2_8M" is the LM trained to 500K updates, not the released esm2_t6_8M_UR50D (270K),
# and "esm2_3B_270K" loads the file fair-esm calls ..._500K. Guessing from the size alone would pair the
# structure-module-only models with the wrong LM without a word.
FAIR_ESM_LM_FOR_ESM_TYPE = {
    "esm2_8M": "esm2_t6_8M_UR50D_500K",
    "esm2_8M_270K": "esm2_t6_8M_UR50D",
    "esm2_35M": "esm2_t12_35M_UR50D_500K",
    "esm2_35M_270K": "esm2_t12_35M_UR50D",
    "esm2_150M": "esm2_t30_150M_UR50D_500K",
    "esm2_150M_270K": "esm2_t30_150M_UR50D_270K",
    "esm2_650M": "esm2_t33_650M_UR50D",
    "esm2_650M_270K": "esm2_t33_650M_270K_UR50D",
    "esm2_3B": "esm2_t36_3B_UR50D",
    "esm2_3B_270K": "esm2_t36_3B_UR50D_500K",
    "esm2_15B": "esm2_t48_15B_UR50D",
}


def esm2_name_for(esm_type: str) -> str:
    """fair-esm ``esm_type`` (``esm2_3B``) -> the ESM-2 checkpoint name fair-esm loads for it
    (``esm2_t36_3B_UR50D``); an ESM-2 checkpoint name is taken as it is."""
    if esm_type in ESM2_SIZES:
        return esm_type
    if esm_type in FAIR_ESM_LM_FOR_ESM_TYPE:
        return FAIR_ESM_LM_FOR_ESM_TYPE[esm_type]
    raise CheckpointError(f"unknown esm_type {esm_type!r}; known: {', '.join(FAIR_ESM_LM_FOR_ESM_TYPE)}")


def fair_esm_lm_name(esmfold_path: str | os.PathLike) -> str | None:
    """The ESM-2 checkpoint (``esm2_t36_3B_UR50D``) a fair-esm ESMFold ``.pt`` needs beside it, from its
    pickled ``esm_type``; None when the file holds its LM itself (``esm.*`` weights). The file is
    memory-mapped, not read."""
    path = Path(esmfold_path)
    state, model_cfg = fair_esm_file(path, "ESMFold")
    if any(k.startswith("esm.") for k in state):
        return None
    return esm2_name_for(str(_plain_config(model_cfg, path).get("esm_type", "esm2_3B")))


def _find_esm2_checkpoint(esmfold_path: Path, esm_type: str, esm_path: str | os.PathLike | None) -> Path:
    if esm_path is not None:
        return Path(esm_path)
    name = esm2_name_for(esm_type)
    beside = esmfold_path.with_name(f"{name}.pt")
    if beside.is_file():
        return beside
    try:
        return resolve_torch_hub_checkpoint(name)
    except CheckpointError as err:
        raise CheckpointError(
            f"{esmfold_path}: needs its language model {name}.pt (esm_type {esm_type!r}); put it beside the file "
            f"({beside}), pass esm_path=, or {err}"
        ) from err


def _load_fair_esm_esmfold(cls, path: Path, device, dtype, esm_path: str | os.PathLike | None) -> "ESMFold":
    state, model_cfg = fair_esm_file(path, "ESMFold")
    plain = _plain_config(model_cfg, path)
    lm_sd, rest = _split_lm(state)
    if lm_sd:  # an LM saved inside the ESMFold file (fair-esm's own layout under esm.)
        lm_source, lm_cfg = path, esm2_config_from_state_dict(lm_sd, path)
    else:
        lm_source = _find_esm2_checkpoint(path, str(plain.get("esm_type", "esm2_3B")), esm_path)
        lm_cfg, lm_sd, _ = read_fair_esm_esm2(lm_source)
    config = esmfold_config_from_fair_esm(plain, lm_cfg, path)
    model = _empty_esmfold(cls, config, device, dtype)
    load_esm2_state_dict(model.esm, lm_sd, lm_source)
    load_into(_folding_part(model), rest, path)
    return model
