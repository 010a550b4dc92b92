"""ESM-2 checkpoint formats: fair-esm's raw ``.pt`` (plus its contact regression file) and transformers'
``EsmModel`` / ``EsmForMaskedLM`` directories, mapped onto :class:`~esmfold_fast.esm2.ESM2`'s keys
(fair-esm's, prefixes stripped)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from ..alphabet import Alphabet
from ..config import ESM2_SIZES, ESM2Config
from .files import (
    HUB_MODEL_FILES,
    CheckpointError,
    Weight,
    as_tensor,
    build_empty,
    fair_esm_file,
    load_into,
    resolve,
    stored_tensors,
    torch_load,
    transformers_directory,
)

if TYPE_CHECKING:
    from ..esm2 import ESM2

CONTACT_KEYS = ("contact_head.regression.weight", "contact_head.regression.bias")


def load_esm2(
    cls: type["ESM2"],
    path: str | os.PathLike,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    lm_head: bool | None = None,
) -> "ESM2":
    """Build ``cls`` from an ESM-2 checkpoint in any supported layout (see ``ESM2.from_pretrained``)."""
    kind, where = resolve(path, HUB_MODEL_FILES)
    if kind == "dir":
        return _load_transformers_dir(cls, where, device, dtype, lm_head)
    return _load_fair_esm_file(cls, where, device, dtype, lm_head)


def empty_esm2(cls: type["ESM2"], config: ESM2Config, device, dtype, *, lm_head: bool, contact_head: bool = True):
    """An ESM2 with uninitialised weights (filled from a checkpoint next) and default rotary buffers."""
    model = build_empty(lambda: cls(config, lm_head=lm_head, contact_head=contact_head), device, dtype)
    if model.contact_head is not None:  # used only if the checkpoint has no regression, then unused
        model.contact_head.regression.reset_parameters()
    return model


def load_esm2_state_dict(model: "ESM2", state_dict: Mapping[str, Weight], source: str | os.PathLike) -> None:
    """Load a state dict in fair-esm's ESM2 layout (prefixes already stripped) into ``model``; strict.

    Allowances: ``lm_head.*`` keys are dropped when the model has no LM head, contact-head keys when it
    has no contact head; a checkpoint without any contact regression loads and marks contacts
    unavailable; rotary ``inv_freq`` may be absent (defaults are used). A mismatch raises
    :class:`CheckpointError` naming ``source`` and the keys.
    """
    sd = dict(state_dict)
    if model.lm_head is None:
        sd = {k: v for k, v in sd.items() if not k.startswith("lm_head.")}
    if model.contact_head is None:
        sd = {k: v for k, v in sd.items() if not k.startswith("contact_head.")}
    ignore_missing = ["rot_emb.inv_freq"]
    no_contacts = model.contact_head is not None and not any(k in sd for k in CONTACT_KEYS)
    if no_contacts:
        ignore_missing += list(CONTACT_KEYS)
    if model.lm_head is not None and "lm_head.weight" in sd and "embed_tokens.weight" in sd:
        if not torch.equal(as_tensor(sd["lm_head.weight"]), as_tensor(sd["embed_tokens.weight"])):
            raise CheckpointError(f"{source}: lm_head.weight differs from embed_tokens.weight (ESM-2 ties them)")
    load_into(model, sd, source, ignore_missing=ignore_missing)
    if no_contacts:
        model.contacts_unavailable = f"{source}: the checkpoint has no contact regression weights"
    elif model.contact_head is not None:
        model.contacts_unavailable = None


# ----------------------------------------------------------------------------------------------
# fair-esm
# ----------------------------------------------------------------------------------------------

_FAIR_ESM_PREFIX = re.compile(r"^(encoder\.sentence_encoder\.|encoder\.)")


def esm2_state_dict_from_fair_esm(state_dict: Mapping[str, Weight]) -> dict[str, Weight]:
    """Strip fair-esm's raw ``encoder.sentence_encoder.`` / ``encoder.`` prefixes (as ``esm.pretrained``)."""
    return {_FAIR_ESM_PREFIX.sub("", k): v for k, v in state_dict.items()}


def esm2_config_from_fair_esm(cfg: Any, source: str = "checkpoint") -> ESM2Config:
    """Map fair-esm's pickled ``cfg["model"]`` (Namespace or dict) to :class:`ESM2Config`."""
    get = cfg.get if isinstance(cfg, Mapping) else (lambda k, d=None: getattr(cfg, k, d))
    try:
        config = ESM2Config(
            num_layers=int(get("encoder_layers")),
            embed_dim=int(get("encoder_embed_dim")),
            attention_heads=int(get("encoder_attention_heads")),
            token_dropout=bool(get("token_dropout", True)),
        )
    except TypeError as err:
        raise CheckpointError(f"{source}: cfg['model'] lacks ESM-2 sizes (encoder_layers, ...): {err}") from err
    ffn = get("encoder_ffn_embed_dim")
    if ffn is not None and int(ffn) != config.ffn_embed_dim:
        raise CheckpointError(f"{source}: encoder_ffn_embed_dim {ffn} != 4 x embed dim; not an ESM-2 model")
    return config


def read_fair_esm_esm2(path: Path) -> tuple[ESM2Config, dict[str, Weight], Path | None]:
    """A fair-esm ESM-2 ``.pt`` -> its config, its state dict in our layout (contact regression merged
    from the sibling ``<name>-contact-regression.pt`` when there is one) and that file, or None."""
    state, model_cfg = fair_esm_file(path, "ESM-2")
    config = esm2_config_from_fair_esm(model_cfg, str(path))
    sd = esm2_state_dict_from_fair_esm(state)
    regression = path.with_name(path.stem + "-contact-regression.pt")
    if not regression.is_file():
        return config, sd, None
    reg, mapped = torch_load(regression)
    if not isinstance(reg, Mapping) or not isinstance(reg.get("model"), Mapping):
        raise CheckpointError(f"{regression}: not a contact regression file (expected {{'model': {{...}}}})")
    sd.update(stored_tensors(reg["model"], mapped, regression))
    return config, sd, regression


def esm2_config_from_state_dict(sd: Mapping[str, Weight], source: Path) -> ESM2Config:
    """ESM-2 sizes read off the weights (an LM stored inside an ESMFold file has no config of its own)."""
    try:
        embed = sd["embed_tokens.weight"].shape[1]
        layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{source}: the esm.* weights are not an ESM-2 model ({err})") from err
    for n_layers, dim, heads in ESM2_SIZES.values():
        if (n_layers, dim) == (layers, embed):
            return ESM2Config(num_layers=layers, embed_dim=embed, attention_heads=heads)
    raise CheckpointError(f"{source}: esm.* weights of {layers} layers x {embed} match no ESM-2 size")


def _load_fair_esm_file(cls, path: Path, device, dtype, lm_head: bool | None) -> "ESM2":
    config, sd, regression = read_fair_esm_esm2(path)
    has_lm = any(k.startswith("lm_head.") for k in sd)
    model = empty_esm2(cls, config, device, dtype, lm_head=has_lm if lm_head is None else lm_head)
    load_esm2_state_dict(model, sd, path)
    if regression is None:
        name = path.stem + "-contact-regression.pt"
        model.contacts_unavailable = f"no contact regression for {path}; put {name} next to it to predict contacts"
    return model


# ----------------------------------------------------------------------------------------------
# transformers
# ----------------------------------------------------------------------------------------------

_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+|\*)\.(.+)$")
_HF_LAYER_PARTS = {
    "attention.self.query": "self_attn.q_proj",
    "attention.self.key": "self_attn.k_proj",
    "attention.self.value": "self_attn.v_proj",
    "attention.output.dense": "self_attn.out_proj",
    "attention.LayerNorm": "self_attn_layer_norm",
    "intermediate.dense": "fc1",
    "output.dense": "fc2",
    "LayerNorm": "final_layer_norm",
}
_HF_PARAM = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}  # gamma/beta: legacy names
_HF_ROTARY_LAYER_KEY = "attention.self.rotary_embeddings.inv_freq"
# Keys transformers itself ignores or that are not part of ESM-2 (EsmModel's pooler).
_HF_DROPPED = re.compile(r"^(embeddings\.position_ids|embeddings\.position_embeddings\.weight|pooler\..*)$")


def esm2_state_dict_from_transformers(
    sd: Mapping[str, Weight], prefix: str = "", lm_head: bool | None = None
) -> dict[str, Weight]:
    """Map transformers ``EsmModel`` / ``EsmForMaskedLM`` keys to :class:`ESM2`'s (fair-esm's).

    ``prefix`` is where the ``EsmModel`` sits (``"esm."`` inside ``EsmForMaskedLM`` and
    ``EsmForProteinFolding``); with ``""`` an ``esm.``-prefixed masked-LM dict is recognised. Keys
    outside the prefix are ignored, except the masked-LM head ``lm_head.{dense,layer_norm,bias,
    decoder}`` which is mapped when ``lm_head`` is True, or None and ``lm_head.dense.weight`` is present
    (ESMFold's own ``lm_head`` is a plain Linear and is never taken). Rotary ``inv_freq`` in any
    layout (per layer, transformers 5.x's model-level key, or the ``layer.*`` key 5.x writes on save)
    is copied to every layer unchanged. Unknown keys under the prefix are kept under their original
    name so a strict load reports them.
    """
    if not prefix and "embeddings.word_embeddings.weight" not in sd and "esm.embeddings.word_embeddings.weight" in sd:
        prefix = "esm."
    out: dict[str, Weight] = {}
    shared_inv_freq: Weight | None = None
    n_layers = 0
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if _HF_DROPPED.match(name):
            continue
        if name == "embeddings.word_embeddings.weight":
            out["embed_tokens.weight"] = value
        elif name.startswith("encoder.emb_layer_norm_after."):
            out["emb_layer_norm_after." + name.rsplit(".", 1)[1]] = value
        elif name.startswith("contact_head.regression."):
            out[name] = value
        elif name == "rotary_embeddings.inv_freq":
            shared_inv_freq = value
        elif (m := _HF_LAYER.match(name)) is not None:
            idx, rest = m.groups()
            if rest == _HF_ROTARY_LAYER_KEY:
                if idx == "*":
                    shared_inv_freq = value
                else:
                    out[f"layers.{idx}.self_attn.rot_emb.inv_freq"] = value
                continue
            part, _, param = rest.rpartition(".")
            if idx == "*" or part not in _HF_LAYER_PARTS or param not in _HF_PARAM:
                out[key] = value
                continue
            out[f"layers.{idx}.{_HF_LAYER_PARTS[part]}.{_HF_PARAM[param]}"] = value
            n_layers = max(n_layers, int(idx) + 1)
        else:
            out[key] = value
    if shared_inv_freq is not None:
        for i in range(n_layers):
            out.setdefault(f"layers.{i}.self_attn.rot_emb.inv_freq", shared_inv_freq)
    if lm_head is None:
        lm_head = "lm_head.dense.weight" in sd
    if lm_head:
        out.update(_lm_head_from_transformers(sd, out))
    return out


def _lm_head_from_transformers(sd: Mapping[str, Weight], mapped: Mapping[str, Weight]) -> dict:
    out = {}
    for key, value in sd.items():
        if key.startswith(("lm_head.dense.", "lm_head.layer_norm.")) or key == "lm_head.bias":
            out[key] = value
    # The decoder is tied to the word embeddings; save_pretrained usually leaves it out.
    decoder = sd.get("lm_head.decoder.weight")
    out["lm_head.weight"] = decoder if decoder is not None else mapped.get("embed_tokens.weight")
    if out["lm_head.weight"] is None:
        del out["lm_head.weight"]
    return out


def esm2_config_from_transformers(config: Mapping[str, Any], source: str = "config.json") -> ESM2Config:
    """Map a transformers ``EsmConfig`` dict (``config.json``) to :class:`ESM2Config`; transformers'
    own defaults fill absent fields."""
    if config.get("position_embedding_type", "absolute") != "rotary":
        raise CheckpointError(f"{source}: position_embedding_type is not 'rotary': not an ESM-2 model")
    if config.get("emb_layer_norm_before"):
        raise CheckpointError(f"{source}: emb_layer_norm_before=True is ESM-1b, not ESM-2")
    vocab = config.get("vocab_list")
    if vocab is not None and list(vocab) != Alphabet().all_toks:
        raise CheckpointError(f"{source}: vocab_list differs from the ESM-2 alphabet")
    rope = config.get("rope_parameters") or {}
    mask_id = config.get("mask_token_id")
    pad_id = config.get("pad_token_id")
    try:
        esm = ESM2Config(
            num_layers=int(config["num_hidden_layers"]),
            embed_dim=int(config["hidden_size"]),
            attention_heads=int(config["num_attention_heads"]),
            token_dropout=bool(config.get("token_dropout", False)),
            alphabet_size=int(config.get("vocab_size", 33)),
            padding_idx=1 if pad_id is None else int(pad_id),
            mask_idx=32 if mask_id is None else int(mask_id),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
            rope_theta=float(config.get("rope_theta") or rope.get("rope_theta") or 10000.0),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: missing or invalid field {err}") from err
    inter = config.get("intermediate_size")
    if inter is not None and int(inter) != esm.ffn_embed_dim:
        raise CheckpointError(f"{source}: intermediate_size {inter} != 4 x hidden_size: not an ESM-2 model")
    return esm


def _load_transformers_dir(cls, directory: Path, device, dtype, lm_head: bool | None) -> "ESM2":
    raw_config, raw, _ = transformers_directory(directory)
    config = esm2_config_from_transformers(raw_config, str(directory / "config.json"))
    has_lm = "lm_head.dense.weight" in raw
    build_lm = has_lm if lm_head is None else lm_head
    if build_lm and not has_lm:
        raise CheckpointError(f"{directory}: lm_head=True but the checkpoint has no masked-LM head")
    sd = esm2_state_dict_from_transformers(raw, lm_head=build_lm)
    model = empty_esm2(cls, config, device, dtype, lm_head=build_lm)
    load_esm2_state_dict(model, sd, directory)
    return model
