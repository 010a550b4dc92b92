"""ESMFold: ESM-2 language model + folding trunk + structure module + confidence heads.

``ESMFold.infer`` follows fair-esm's ``ESMFold.infer`` (output keys, shapes, pLDDT on 0-100, per-sequence pTM,
multimers through ``':'``); the state dict keeps transformers' ``EsmForProteinFolding`` / fair-esm key names
(``esm_s_combine``, ``esm_s_mlp``, ``embedding``, ``trunk.*``, ``*_head``), with the LM under ``esm.`` in
fair-esm's ESM-2 layout.

Precision: the whole model runs in one dtype by default (fp16 matmuls are slow on CPU). On CUDA, a model
built by :meth:`ESMFold.from_pretrained` / :meth:`ESMFold.from_config` in float32 with ``fp16_esm`` in its
config runs the LM in fp16 like the reference; its representations are cast to the trunk dtype.

A model built in bfloat16 or float16 (``dtype=torch.bfloat16``) stores and computes the pair track (pair
state, triangle updates, triangle attention, pair transition) in that dtype, which is nearly all of the
trunk's work and memory, and keeps float32 islands where the numerics need them
(:meth:`ESMFold.float32_islands`): the LM and the sequence track, the sequence -> pair product, the
structure module with its input projections (eight shared-weight iterations amplify rounding: in bf16 it
moved random-weight atoms by Angstroms) and the output heads. LayerNorm and softmax statistics accumulate
in float32 inside the half-precision ops.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from . import backend as _backend
from . import residue_constants as rc
from ._checkpoint import CheckpointError, load_into, torch_load
from .alphabet import Alphabet
from .config import ESM2_SIZES, ESM2Config, ESMFoldConfig, StructureModuleConfig, TrunkConfig, named_config, with_overrides
from .esm2 import ESM2, esm2_config_from_fair_esm, esm2_state_dict_from_fair_esm, esm2_state_dict_from_transformers
from .heads import (
    DISTOGRAM_BINS,
    LDDT_BINS,
    lddt_head,
    pair_linear,
    plddt_from_logits,
    predicted_aligned_error,
    ptm_per_sequence,
    symmetric_distogram_logits,
)
from .hub import (
    TRANSFORMERS_WEIGHT_FILES,
    load_transformers_config,
    load_transformers_state_dict,
    resolve_hf_snapshot,
    resolve_torch_hub_checkpoint,
    transformers_weight_files,
)
from .protein import make_atom14_masks
from .trunk import FoldingTrunk, init_trunk_weights_, release_freed_heap

# 0 is padding, 1..20 the residues, 21 unknown (X), 22 mask: AlphaFold2 order shifted by one.
N_TOKENS_EMBED = rc.restype_num + 3
STRUCTURE_KEYS = ("s_z", "s_s", "frames", "sidechain_frames", "unnormalized_angles", "angles", "positions", "states")
# fair-esm's StructureModuleConfig (OpenFold names) -> ours (transformers' names).
_FAIR_ESM_SM_NAMES = {
    "c_s": "sequence_dim", "c_z": "pairwise_dim", "c_ipa": "ipa_dim", "c_resnet": "resnet_dim",
    "no_heads_ipa": "num_heads_ipa", "no_qk_points": "num_qk_points", "no_v_points": "num_v_points",
    "no_blocks": "num_blocks", "no_transition_layers": "num_transition_layers",
    "no_resnet_blocks": "num_resnet_blocks", "no_angles": "num_angles",
}  # fmt: skip


class ESMFold(nn.Module):
    """ESMFold v1 (Lin et al. 2023). Build with :meth:`from_pretrained` or :meth:`from_config`."""

    def __init__(self, config: ESMFoldConfig):
        super().__init__()
        config.validate()
        self.config = config
        trunk_cfg = config.trunk
        c_s, c_z = trunk_cfg.sequence_state_dim, trunk_cfg.pairwise_state_dim
        self.alphabet = Alphabet("ESM-1b")
        self.esm = ESM2(config.esm, lm_head=False, contact_head=False)
        self.esm.requires_grad_(False)
        self.esm_feats = config.esm.embed_dim
        self.register_buffer("af2_to_esm", self._af2_to_esm(self.alphabet))
        self.esm_s_combine = nn.Parameter(torch.zeros(config.esm.num_layers + 1))
        self.esm_s_mlp = nn.Sequential(
            nn.LayerNorm(self.esm_feats), nn.Linear(self.esm_feats, c_s), nn.ReLU(), nn.Linear(c_s, c_s)
        )
        self.pad_idx, self.unk_idx, self.mask_idx = 0, N_TOKENS_EMBED - 2, N_TOKENS_EMBED - 1
        if config.embed_aa:
            self.embedding = nn.Embedding(N_TOKENS_EMBED, c_s, padding_idx=0)
        self.trunk = FoldingTrunk(trunk_cfg)
        self.distogram_bins = DISTOGRAM_BINS
        self.distogram_head = nn.Linear(c_z, DISTOGRAM_BINS)
        self.ptm_head = nn.Linear(c_z, DISTOGRAM_BINS)
        self.lm_head = nn.Linear(c_s, N_TOKENS_EMBED)
        self.lddt_bins = LDDT_BINS
        self.lddt_head = lddt_head(trunk_cfg.structure_module.sequence_dim, config.lddt_head_hid_dim)
        self.backend = _backend.get_backend("torch")

    # ------------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------------

    @staticmethod
    def _af2_to_esm(alphabet: Alphabet) -> torch.Tensor:
        """ESM token of each AlphaFold2 index shifted by one (0 = padding)."""
        return torch.tensor([alphabet.padding_idx] + [alphabet.get_idx(r) for r in rc.restypes_with_x])

    @classmethod
    def from_config(
        cls,
        name_or_config: str | ESMFoldConfig = "esmfold_v1",
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        seed: int = 0,
        **overrides: Any,
    ) -> "ESMFold":
        """A randomly initialised model of a named size (``esmfold_v1``, ``esmfold_v1_8M``, ``tiny``) or of a
        config, for benchmarks and tests. ``overrides`` set trunk or top-level config fields (``num_blocks=1``,
        ``esm="esm2_t6_8M_UR50D"``). Every weight is drawn (nothing zero-initialised) with scales that keep
        the states O(1) through the stack."""
        if isinstance(name_or_config, str):
            config = named_config(name_or_config, **overrides)
        else:
            config = with_overrides(name_or_config, **overrides)
        device = torch.device(device) if device is not None else torch.device("cpu")
        dtype = dtype or torch.float32
        # Default inits draw from the global RNG: seed a forked one so ``seed`` alone fixes every weight.
        with torch.random.fork_rng(devices=[]), _default_dtype(dtype), device:
            torch.manual_seed(seed)
            model = cls(config)
        model._keep_float32_islands()
        model._init_random_(torch.Generator(device=device).manual_seed(seed))
        return model._finish(backend, device)

    @torch.no_grad()
    def _init_random_(self, generator: torch.Generator) -> None:
        init_trunk_weights_(self.trunk, generator)
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, 1.0, generator=generator)
        self.esm_s_combine.normal_(0.0, 0.5, generator=generator)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        esm_path: str | os.PathLike | None = None,
    ) -> "ESMFold":
        """Load ESMFold weights; nothing is ever downloaded.

        ``path`` is (a) a transformers ``EsmForProteinFolding`` directory (``config.json`` + ``model.safetensors``
        or ``pytorch_model.bin``, sharded or not), (b) fair-esm's ``esmfold_3B_v1.pt`` (its LM comes from the
        ``esm_type`` ESM-2 checkpoint: ``esm_path``, else beside the file, else the torch hub cache), (c) a hub
        name (``facebook/esmfold_v1``) from the local Hugging Face cache, or (d) a fair-esm name
        (``esmfold_3B_v1``) from the torch hub cache. The model is built once in ``dtype`` (default float32)
        on ``device`` and filled from the memory-mapped checkpoint. Returns an eval-mode model.
        """
        device = torch.device(device) if device is not None else torch.device("cpu")
        dtype = dtype or torch.float32
        p = Path(path)
        if p.is_dir():
            model = _load_transformers_dir(cls, p, device, dtype)
        elif p.is_file() or str(path).endswith(".pt"):
            model = _load_fair_esm_esmfold(cls, p, device, dtype, esm_path)
        elif "/" in str(path):
            snapshot = resolve_hf_snapshot(str(path), ("config.json", TRANSFORMERS_WEIGHT_FILES))
            model = _load_transformers_dir(cls, snapshot, device, dtype)
        else:
            model = _load_fair_esm_esmfold(cls, resolve_torch_hub_checkpoint(str(path)), device, dtype, esm_path)
        return model._finish(backend, device)

    def float32_islands(self) -> list[nn.Module]:
        """Modules that stay float32 in a half-precision model: the whole sequence track (the LM mix and its
        MLP, the trunk's sequence attention and MLP: O(L) or O(L^2 c_s) work, and the structure is most
        sensitive to it), the structure module with its input projections, and the heads. What is left in
        half precision is the pair track, which holds nearly all of the trunk's work and memory."""
        t = self.trunk
        islands = [self.esm, self.esm_s_mlp, t.recycle_s_norm, t.structure_module, t.trunk2sm_s, t.trunk2sm_z]
        islands += [self.distogram_head, self.ptm_head, self.lddt_head, self.lm_head]
        if self.config.embed_aa:
            islands.append(self.embedding)
        for block in t.blocks:
            islands += [block.layernorm_1, block.seq_attention, block.mlp_seq, block.sequence_to_pair]
        return islands

    def _keep_float32_islands(self) -> None:
        """Give the islands float32 parameters when the model's dtype is a half one (before weights are set)."""
        if self.esm_s_combine.dtype in (torch.bfloat16, torch.float16):
            self.esm_s_combine.data = self.esm_s_combine.data.float()  # the LM mix, and so the sequence dtype
            for module in self.float32_islands():
                module.float()

    def _finish(self, backend: str, device: torch.device) -> "ESMFold":
        if device.type == "cuda" and self.config.fp16_esm and self.esm_s_combine.dtype == torch.float32:
            self.esm.half()
        self.set_backend(backend)
        return self.eval()

    # ------------------------------------------------------------------------------------------
    # settings
    # ------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.esm_s_combine.device

    def set_backend(self, name: str | _backend.Backend) -> _backend.Backend:
        """Validate ``name`` for this model's device and hand it to every module (see :mod:`.backend`)."""
        return _backend.set_backend(self, name, self.device)

    def set_chunk_size(self, chunk_size: int | None) -> None:
        """Cap on the rows per chunk of pair-wide work in the trunk (``None``: a fixed memory budget)."""
        self.trunk.set_chunk_size(chunk_size)

    # ------------------------------------------------------------------------------------------
    # forward
    # ------------------------------------------------------------------------------------------

    def _af2_idx_to_esm_idx(self, aa: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.af2_to_esm[(aa + 1).masked_fill(mask != 1, 0)]

    def _language_model_states(self, esmaa: torch.Tensor) -> torch.Tensor:
        """Softmax-weighted mix of every ESM-2 layer's states (``esm_s_combine``) -> [B, L, C], trunk dtype.

        cls/eos are added for the LM and dropped after; the eos goes at each sequence's first padding slot.
        """
        b = esmaa.shape[0]
        dtype = self.esm_s_combine.dtype
        weights = self.esm_s_combine.softmax(0)  # [n_layers + 1]
        if self.config.bypass_lm or self.config.esm_ablate_sequence:
            return weights.new_zeros(b, esmaa.shape[1], self.esm_feats)
        bos = esmaa.new_full((b, 1), self.alphabet.cls_idx)
        pad = esmaa.new_full((b, 1), self.alphabet.padding_idx)
        tokens = torch.cat([bos, esmaa, pad], dim=1)  # [B, L + 2]
        tokens[torch.arange(b, device=tokens.device), (tokens != self.alphabet.padding_idx).sum(1)] = (
            self.alphabet.eos_idx
        )
        reps = self.esm(tokens, repr_layers=range(self.esm.num_layers + 1), return_logits=False)["representations"]
        mixed = None
        for layer in range(self.esm.num_layers + 1):
            term = weights[layer] * reps[layer][:, 1:-1].to(dtype)  # [B, L, C]
            mixed = term if mixed is None else mixed.add_(term)
        return mixed.detach()

    def forward(
        self,
        aa: torch.Tensor,
        mask: torch.Tensor | None = None,
        residx: torch.Tensor | None = None,
        masking_pattern: torch.Tensor | None = None,
        num_recycles: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Fold a batch of AlphaFold2-indexed sequences ``aa`` [B, L] (0-20, 20 = X).

        ``mask`` [B, L] 1 = residue; ``residx`` [B, L] residue indices (default 0..L-1); ``masking_pattern``
        [B, L] 1 = replace by ``<mask>`` for the LM; ``num_recycles`` None = ``max_recycles`` trunk passes,
        N = N + 1 passes. Returns fair-esm's ``forward`` dict (pLDDT on 0-100, pTM per sequence).
        """
        b, n = aa.shape
        if mask is None:
            mask = torch.ones_like(aa)
        if residx is None:
            residx = torch.arange(n, device=aa.device).expand_as(aa)
        esmaa = self._af2_idx_to_esm_idx(aa, mask)
        if masking_pattern is not None:
            esmaa = esmaa.masked_fill(masking_pattern == 1, self.alphabet.mask_idx)
        with _denormals_flushed(self.device):
            s_s_0 = self.esm_s_mlp(self._language_model_states(esmaa))  # [B, L, c_s]
            if self.config.embed_aa:
                s_s_0 += self.embedding(aa)
            release_freed_heap()
            structure = self.trunk(s_s_0, None, aa, residx, mask, no_recycles=num_recycles)
            out = {k: structure[k] for k in STRUCTURE_KEYS}
            del structure
            release_freed_heap()
            return self._heads(out, aa, mask, residx)

    def _heads(
        self, out: dict[str, torch.Tensor], aa: torch.Tensor, mask: torch.Tensor, residx: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        b, n = aa.shape
        out["distogram_logits"] = symmetric_distogram_logits(self.distogram_head, out["s_z"])
        out["lm_logits"] = self.lm_head(out["s_s"].to(self.lm_head.weight.dtype))
        out["aatype"] = aa
        out.update(make_atom14_masks(aa))
        maskf = mask.to(out["atom14_atom_exists"].dtype).unsqueeze(-1)
        out["atom14_atom_exists"] = out["atom14_atom_exists"] * maskf
        out["atom37_atom_exists"] = out["atom37_atom_exists"] * maskf
        out["residue_index"] = residx
        states = out["states"]  # [n_sm_blocks, B, L, c_sm]
        out["lddt_head"] = self.lddt_head(states).reshape(states.shape[0], b, n, -1, self.lddt_bins)
        out["plddt"] = plddt_from_logits(out["lddt_head"][-1])  # [B, L, 37], 0-100
        ptm_logits = pair_linear(self.ptm_head, out["s_z"])  # [B, L, L, bins]
        out["ptm_logits"] = ptm_logits
        out.update(predicted_aligned_error(ptm_logits, no_bins=self.distogram_bins))
        out["ptm"] = ptm_per_sequence(ptm_logits, mask, probs=out["aligned_confidence_probs"])
        return out

    # ------------------------------------------------------------------------------------------
    # inference from sequences
    # ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def infer(
        self,
        sequences: str | Sequence[str],
        residx: torch.Tensor | Sequence[torch.Tensor] | None = None,
        masking_pattern: torch.Tensor | None = None,
        num_recycles: int | None = None,
        residue_index_offset: int | None = 512,
        chain_linker: str | None = "G" * 25,
    ) -> dict[str, torch.Tensor]:
        """Fold one or more sequences; a multimer is its chains joined by ``':'``.

        Chains are joined by ``chain_linker`` and chain i's residue indices are shifted by
        ``i * residue_index_offset``; linker atoms are masked out of ``atom37_atom_exists``. Sequences are
        upper-cased and letters outside the 20 amino acids read as X; other characters raise ``ValueError``.
        Returns fair-esm's output dict plus ``mean_plddt`` [B] and ``chain_index`` [B, L] (-1 at padding).
        """
        if isinstance(sequences, str):
            sequences = [sequences]
        if len(sequences) == 0:
            raise ValueError("no sequences given")
        aatype, mask, default_residx, linker_mask, chain_index = batch_encode_sequences(
            sequences, residue_index_offset, chain_linker
        )
        if residx is None:
            residx = default_residx
        elif not isinstance(residx, torch.Tensor):
            residx = collate_dense([torch.as_tensor(r) for r in residx])
        device = self.device
        aatype, mask, residx, linker_mask = (t.to(device) for t in (aatype, mask, residx, linker_mask))
        output = self.forward(
            aatype, mask=mask, residx=residx.long(), masking_pattern=masking_pattern, num_recycles=num_recycles
        )
        exists = output["atom37_atom_exists"] * linker_mask.unsqueeze(2).to(output["atom37_atom_exists"].dtype)
        output["atom37_atom_exists"] = exists
        output["mean_plddt"] = (output["plddt"] * exists).sum(dim=(1, 2)) / exists.sum(dim=(1, 2))
        output["chain_index"] = chain_index.to(device)
        return output

    def output_to_pdb(self, output: Mapping[str, torch.Tensor]) -> list[str]:
        from .output import output_to_pdbs

        return output_to_pdbs(output)

    def infer_pdbs(self, sequences: Sequence[str], *args: Any, **kwargs: Any) -> list[str]:
        """One PDB string per sequence (pLDDT in the B-factor column, one chain id per chain)."""
        return self.output_to_pdb(self.infer(list(sequences), *args, **kwargs))

    def infer_pdb(self, sequence: str, *args: Any, **kwargs: Any) -> str:
        return self.infer_pdbs([sequence], *args, **kwargs)[0]


# ----------------------------------------------------------------------------------------------
# sequence encoding (fair-esm's esm/esmfold/v1/misc.py semantics)
# ----------------------------------------------------------------------------------------------


def _check_sequence(seq: str) -> str:
    if not isinstance(seq, str):
        raise ValueError(f"a sequence must be a str, got {type(seq).__name__}")
    bad = sorted({ch for ch in seq if not (ch == ":" or (ch.isascii() and ch.isalpha()))})
    if bad:
        raise ValueError(f"sequence {seq!r} contains characters that are not amino-acid letters or ':': {bad}")
    chains = seq.split(":")
    if any(len(c) == 0 for c in chains):
        raise ValueError(f"sequence {seq!r} has an empty chain")
    return seq.upper()


def encode_sequence(
    seq: str, residue_index_offset: int | None = 512, chain_linker: str | None = "G" * 25
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One (possibly multi-chain) sequence -> aatype [L], residx [L], linker_mask [L] (float), chain_index [L].

    A linker residue carries the chain index and residue-index offset of the chain before it.
    """
    seq = _check_sequence(seq)
    linker = _check_sequence(chain_linker).upper() if chain_linker else ""
    offset = residue_index_offset or 0
    chains = seq.split(":")
    unk = rc.restype_order_with_x["X"]
    aatype, residx, linker_mask, chain_index = [], [], [], []
    for i, chain in enumerate(chains):
        if i > 0:
            start = len(aatype)
            aatype += [rc.restype_order_with_x.get(a, unk) for a in linker]
            residx += [start + j + (i - 1) * offset for j in range(len(linker))]
            linker_mask += [0.0] * len(linker)
            chain_index += [i - 1] * len(linker)
        start = len(aatype)
        aatype += [rc.restype_order_with_x.get(a, unk) for a in chain]
        residx += [start + j + i * offset for j in range(len(chain))]
        linker_mask += [1.0] * len(chain)
        chain_index += [i] * len(chain)
    return (
        torch.tensor(aatype, dtype=torch.int64),
        torch.tensor(residx, dtype=torch.int64),
        torch.tensor(linker_mask, dtype=torch.float32),
        torch.tensor(chain_index, dtype=torch.int64),
    )


def collate_dense(samples: Sequence[torch.Tensor], pad_value: float = 0) -> torch.Tensor:
    """Stack tensors of different shapes into one, padded with ``pad_value`` at the end of each dim."""
    shape = [max(sizes) for sizes in zip(*(t.shape for t in samples))]
    out = samples[0].new_full((len(samples), *shape), pad_value)
    for i, t in enumerate(samples):
        out[(i, *(slice(0, d) for d in t.shape))] = t
    return out


def batch_encode_sequences(
    sequences: Sequence[str], residue_index_offset: int | None = 512, chain_linker: str | None = "G" * 25
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """aatype, mask, residx, linker_mask, chain_index, each [B, L_max] (chain_index -1 at padding)."""
    encoded = [encode_sequence(s, residue_index_offset, chain_linker) for s in sequences]
    aatype = collate_dense([e[0] for e in encoded])
    mask = collate_dense([torch.ones_like(e[0]) for e in encoded])
    residx = collate_dense([e[1] for e in encoded])
    linker_mask = collate_dense([e[2] for e in encoded])
    chain_index = collate_dense([e[3] for e in encoded], -1)
    return aatype, mask, residx, linker_mask, chain_index


# ----------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------

_INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
    "xavier_normal_", "orthogonal_",
)  # fmt: skip


@contextlib.contextmanager
def _skip_random_init() -> Iterator[None]:
    """Build modules without drawing random weights (every parameter is copied from a checkpoint next)."""
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


@contextlib.contextmanager
def _denormals_flushed(device: torch.device) -> Iterator[None]:
    """Flush denormal floats to zero on CPU for the duration of a fold.

    Softmaxes over strongly peaked logits (random or trained weights alike) produce denormal
    probabilities, which x86 cores handle in microcode: at L=640 that made the triangle attention ten
    times slower. Flushed, they become 0 (an absolute change below 1.2e-38). The previous setting,
    which torch cannot report, is read off a denormal product and restored.
    """
    if device.type != "cpu":
        yield
        return
    was_on = float(torch.tensor(1e-40, dtype=torch.float32) * 1.0) == 0.0
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_on)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly in ``dtype`` (no float32 copy first)."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def _build_for_loading(cls, config: ESMFoldConfig, device: torch.device, dtype: torch.dtype) -> ESMFold:
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating point dtype, got {dtype}")
    with _skip_random_init(), _default_dtype(dtype), device:
        model = cls(config)
    model._keep_float32_islands()  # before loading, so the islands get the checkpoint's full precision
    return model


def _folding_part(model: ESMFold) -> nn.Module:
    """A view of everything but the LM (same tensors), so the two parts load from their own sources."""
    part = nn.Module()
    for name, child in model.named_children():
        if name != "esm":
            part.add_module(name, child)
    part.esm_s_combine = model.esm_s_combine
    part.register_buffer("af2_to_esm", model.af2_to_esm)
    return part


def _split_lm(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    lm = {k: v for k, v in sd.items() if k.startswith("esm.")}
    rest = {k: v for k, v in sd.items() if not k.startswith("esm.")}
    return lm, rest


def _load_transformers_dir(cls, directory: Path, device: torch.device, dtype: torch.dtype) -> ESMFold:
    raw_config = load_transformers_config(directory)
    if not raw_config.get("is_folding_model", raw_config.get("esmfold_config") is not None):
        raise CheckpointError(f"{directory / 'config.json'}: not an EsmForProteinFolding config (is_folding_model)")
    try:
        config = ESMFoldConfig.from_transformers(raw_config)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{directory / 'config.json'}: cannot read the ESMFold config ({err})") from err
    source = ", ".join(str(p) for p in transformers_weight_files(directory))
    lm_sd, rest = _split_lm(load_transformers_state_dict(directory))
    model = _build_for_loading(cls, config, device, dtype)
    model.esm.load_esm2_state_dict(esm2_state_dict_from_transformers(lm_sd, prefix="esm.", lm_head=False), source)
    load_into(_folding_part(model), rest, source)
    return model


def _plain_config(cfg: Any, source: Path) -> dict[str, Any]:
    """fair-esm's pickled config (dict, Namespace, dataclass or OmegaConf DictConfig) as nested dicts."""
    if isinstance(cfg, Mapping) and not _is_omegaconf(cfg):
        return {k: _plain_config(v, source) if _is_config_like(v) else v for k, v in cfg.items()}
    if isinstance(cfg, argparse.Namespace):
        return _plain_config(vars(cfg), source)
    if dataclasses.is_dataclass(cfg):
        return _plain_config(dataclasses.asdict(cfg), source)
    if _is_omegaconf(cfg):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True)
    raise CheckpointError(f"{source}: cfg['model'] is a {type(cfg).__name__}, not a config")


def _is_omegaconf(obj: Any) -> bool:
    return type(obj).__module__.startswith("omegaconf")


def _is_config_like(obj: Any) -> bool:
    return isinstance(obj, (Mapping, argparse.Namespace)) or dataclasses.is_dataclass(obj) or _is_omegaconf(obj)


def _omegaconf_globals() -> list:
    """The classes an OmegaConf DictConfig pickles, allowed through ``weights_only`` loading."""
    import typing

    import omegaconf
    from omegaconf import base, dictconfig, listconfig, nodes

    classes = [dictconfig.DictConfig, listconfig.ListConfig, base.ContainerMetadata, base.Metadata, typing.Any]
    classes += [getattr(nodes, n) for n in dir(nodes) if n.endswith("Node") and isinstance(getattr(nodes, n), type)]
    classes += [omegaconf.base.Node] if hasattr(omegaconf.base, "Node") else []
    return classes + [dict, list, int, float, bool, str]


def _load_fair_esm_file(path: Path) -> Mapping[str, Any]:
    """``torch_load`` with the OmegaConf classes allowed when omegaconf is importable (the released
    ``esmfold_3B_v1.pt`` pickles its config as a DictConfig)."""
    try:
        return torch_load(path)
    except CheckpointError as err:
        if "omegaconf" not in str(err):
            raise
        try:
            globals_ = _omegaconf_globals()
        except ImportError:
            raise CheckpointError(
                f"{path}: its config is an OmegaConf object; install omegaconf (pip install omegaconf) to read it"
            ) from err
    with torch.serialization.safe_globals(globals_):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # the same failures torch_load reports
            raise CheckpointError(f"{path}: cannot read checkpoint ({str(err).strip().splitlines()[0]})") from err


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


def esm2_name_for(esm_type: str) -> str:
    """fair-esm ``esm_type`` (``esm2_3B``) -> checkpoint name (``esm2_t36_3B_UR50D``)."""
    if esm_type in ESM2_SIZES:
        return esm_type
    size = esm_type.split("_", 1)[-1]
    for name in ESM2_SIZES:
        if name.split("_")[2] == size and esm_type.startswith("esm2"):
            return name
    raise CheckpointError(f"unknown esm_type {esm_type!r}; known: {', '.join(ESM2_SIZES)}")


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


def _load_fair_esm_esmfold(
    cls, path: Path, device: torch.device, dtype: torch.dtype, esm_path: str | os.PathLike | None
) -> ESMFold:
    data = _load_fair_esm_file(path)
    if not isinstance(data, Mapping) or not isinstance(data.get("model"), Mapping) or "cfg" not in data:
        raise CheckpointError(f"{path}: not a fair-esm ESMFold checkpoint (expected {{'cfg': ..., 'model': ...}})")
    cfg = data["cfg"]
    model_cfg = cfg.get("model") if isinstance(cfg, Mapping) else getattr(cfg, "model", None)
    if model_cfg is None:
        raise CheckpointError(f"{path}: no cfg['model'] in the checkpoint")
    plain = _plain_config(model_cfg, path)
    lm_sd, rest = _split_lm(data["model"])
    if lm_sd:  # an LM saved inside the ESMFold file (fair-esm's own layout under esm.)
        lm_source, lm_sd = path, {k[len("esm.") :]: v for k, v in lm_sd.items()}
        lm_cfg = _esm2_config_from_state_dict(lm_sd, path)
    else:
        lm_source = _find_esm2_checkpoint(path, str(plain.get("esm_type", "esm2_3B")), esm_path)
        lm_data = torch_load(lm_source)
        if not isinstance(lm_data, Mapping) or "model" not in lm_data or "cfg" not in lm_data:
            raise CheckpointError(f"{lm_source}: not a fair-esm ESM-2 checkpoint (expected {{'cfg', 'model'}})")
        lm_cfg = esm2_config_from_fair_esm(lm_data["cfg"]["model"], str(lm_source))
        lm_sd = esm2_state_dict_from_fair_esm(lm_data["model"])
    config = esmfold_config_from_fair_esm(plain, lm_cfg, path)
    model = _build_for_loading(cls, config, device, dtype)
    model.esm.load_esm2_state_dict(lm_sd, lm_source)
    load_into(_folding_part(model), rest, path)
    return model


def _esm2_config_from_state_dict(sd: Mapping[str, torch.Tensor], source: Path) -> ESM2Config:
    """ESM-2 sizes read off the weights (an LM stored inside an ESMFold file has no config of its own)."""
    try:
        embed = sd["embed_tokens.weight"].shape[1]
        layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{source}: the esm.* weights are not an ESM-2 model ({err})") from err
    for name, (n_layers, dim, heads) in ESM2_SIZES.items():
        if (n_layers, dim) == (layers, embed):
            return ESM2Config(num_layers=layers, embed_dim=embed, attention_heads=heads)
    raise CheckpointError(f"{source}: esm.* weights of {layers} layers x {embed} match no ESM-2 size")


__all__ = ["ESMFold", "batch_encode_sequences", "encode_sequence", "esm2_name_for", "esmfold_config_from_fair_esm"]
