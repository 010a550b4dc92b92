"""ESMFold: ESM-2 language model + folding trunk + structure module + confidence heads.

``ESMFold.infer`` follows fair-esm's ``ESMFold.infer`` (output keys, shapes, pLDDT on 0-100, per-sequence pTM,
multimers through ``':'``); the state dict keeps transformers' ``EsmForProteinFolding`` / fair-esm key names
(``esm_s_combine``, ``esm_s_mlp``, ``embedding``, ``trunk.*``, ``*_head``), with the LM under ``esm.`` in
fair-esm's ESM-2 layout.

Precision: the whole model runs in one dtype by default (fp16 matmuls are slow on CPU). On CUDA, a model
built by :meth:`ESMFold.from_pretrained` / :meth:`ESMFold.from_config` in float32 (or bfloat16 / float16; not
float64) with ``fp16_esm`` in its config runs the LM in fp16 like the reference; its representations are cast
to the trunk dtype. That LM
also makes its rotary tables in fp16 as fair-esm's ``self.esm.half()`` does (``model.esm.fair_esm_half_rotary``,
on by default here: the released trunk was trained behind those tables; see
:class:`~esmfold_fast.esm2.RotaryEmbedding`). An fp32 LM (CPU, or ``fp16_esm`` off) has fp32 tables as before.

A model built in bfloat16 or float16 (``dtype=torch.bfloat16``) stores and computes the pair track (pair
state, triangle updates, triangle attention, pair transition) in that dtype, which is nearly all of the
trunk's work and memory, and keeps float32 islands where the numerics need them
(:meth:`ESMFold.float32_islands`): the LM and the sequence track, the sequence -> pair product, the
structure module with its input projections (eight shared-weight iterations amplify rounding: in bf16 it
moved random-weight atoms by Angstroms) and the output heads. LayerNorm and softmax statistics accumulate
in float32 inside the half-precision ops.

Moves and casts (``.to``, ``.cuda``, ``.cpu``, ``.half``, ``.bfloat16``, ``.float``, ``.double``) leave the
model as :meth:`ESMFold.from_pretrained` builds it for the new device and dtype; see :class:`ESMFold`.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from . import backend as _backend
from . import residue_constants as rc
from .alphabet import Alphabet, batch_encode_sequences, collate_dense
from .backend import backend_for_move, conversion_target
from .checkpoints.files import default_dtype
from .config import ESMFoldConfig, named_config, with_overrides
from .esm2 import ESM2
from .heads import (
    DISTOGRAM_BINS,
    LDDT_BINS,
    chain_scores,
    lddt_head,
    pair_linear,
    plddt_from_logits,
    predicted_aligned_error,
    ptm_per_sequence,
    symmetric_distogram_logits,
)
from .memory import release_freed_heap
from .protein import make_atom14_masks
from .trunk import FoldingTrunk, init_trunk_weights_

# 0 is padding, 1..20 the residues, 21 unknown (X), 22 mask: AlphaFold2 order shifted by one.
N_TOKENS_EMBED = rc.restype_num + 3
STRUCTURE_KEYS = ("s_z", "s_s", "frames", "sidechain_frames", "unnormalized_angles", "angles", "positions", "states")
# The outputs with a channel axis per residue pair, [B, L, L, C] (C = 128 or 64): 9 GB in fp32 at L = 2700.
# ``return_pair_outputs=False`` leaves them out; ``predicted_aligned_error`` [B, L, L] stays.
PAIR_OUTPUT_KEYS = ("s_z", "distogram_logits", "ptm_logits", "aligned_confidence_probs")
HALF_DTYPES = (torch.float16, torch.bfloat16)


class ESMFold(nn.Module):
    """ESMFold v1 (Lin et al. 2023). Build with :meth:`from_pretrained` or :meth:`from_config`.

    The model's :attr:`dtype` is its pair track's; in a float16 or bfloat16 model the
    :meth:`float32_islands` stay float32, and on CUDA the LM runs in fp16 when the config has ``fp16_esm``
    (:meth:`lm_in_fp16`). Every ``nn.Module`` conversion keeps that layout, so a moved or cast model is laid
    out as ``from_pretrained(device=..., dtype=...)`` would build it and folds like one:

    - ``.to(device)``, ``.cuda()``, ``.cpu()``: the backend chosen (``backend=``, :meth:`set_backend`) is
      validated for the new device before any weight moves: ``auto`` resolves again (``triton`` on CUDA,
      ``torch`` elsewhere); one that cannot run there raises ``RuntimeError`` and the model stays where it
      was (call ``set_backend('auto')`` first). ``.cuda()`` without CUDA raises torch's own error, also
      before anything moves. On CUDA the LM goes to fp16 (set ``model.config.fp16_esm = False`` before the
      move to keep it float32); back on the CPU it returns to the model's dtype, holding the fp16-rounded
      values (reload the checkpoint for its exact weights).
    - ``.half()``, ``.bfloat16()``, ``.to(torch.float16)``: a half-precision model, the pair track in that
      dtype; the float32 islands are only moved, never rounded, so the sequence track, structure module
      and heads keep their exact weights.
    - ``.float()``, ``.double()``, ``.to(torch.float32)``: the whole model in that dtype, islands included (on
      CUDA the LM stays fp16 as above); a float64 model has a float64 LM everywhere. Weights a half-precision
      model had rounded stay rounded: reload for the exact ones.
    - a non-floating dtype (``.type(torch.long)``, ``.to(torch.int8)``) raises ``TypeError``; integer buffers
      (the token map) keep their dtype through every conversion.
    """

    def __init__(self, config: ESMFoldConfig):
        super().__init__()
        config.validate()
        self.config = config
        trunk_cfg = config.trunk
        c_s, c_z = trunk_cfg.sequence_state_dim, trunk_cfg.pairwise_state_dim
        self.alphabet = Alphabet("ESM-1b")
        self.esm = ESM2(config.esm, lm_head=False, contact_head=False, fair_esm_half_rotary=True)
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
        self._backend_choice = "torch"  # what set_backend was asked for ("auto" included): moves revalidate it

    # ------------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------------

    @staticmethod
    def _af2_to_esm(alphabet: Alphabet) -> torch.Tensor:
        """ESM token of each AlphaFold2 index shifted by one (0 = padding)."""
        return torch.tensor([alphabet.padding_idx] + [alphabet.get_idx(r) for r in rc.restypes_with_x])

    def reset_buffers(self) -> None:
        """Refill the token map (after ``to_empty`` gave it uninitialised storage)."""
        with torch.no_grad():
            self.af2_to_esm.copy_(self._af2_to_esm(self.alphabet))

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
        with torch.random.fork_rng(devices=[]), default_dtype(dtype), device:
            torch.manual_seed(seed)
            model = cls(config)
        model.apply_dtype_layout()
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
        from .checkpoints import load_esmfold

        device = torch.device(device) if device is not None else torch.device("cpu")
        model = load_esmfold(cls, path, device, dtype, esm_path)
        return model._finish(backend, device)

    @classmethod
    def from_transformers(
        cls,
        model: nn.Module,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> "ESMFold":
        """A copy of transformers' ``EsmForProteinFolding`` ``model`` (its config and weights) as an
        :class:`ESMFold`, on ``device`` (default: the model's). The weights are copied, not shared."""
        from .checkpoints.esmfold import esmfold_from_transformers

        if device is None:
            device = next(model.parameters()).device
        device = torch.device(device)
        name = type(model).__name__
        ours = esmfold_from_transformers(
            cls, model.config.to_dict(), model.state_dict(), device, dtype, (f"{name}.config", f"{name}.state_dict()")
        )
        return ours._finish(backend, device)

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

    @property
    def dtype(self) -> torch.dtype:
        """The model's dtype: its pair track's (float32 islands and an fp16 LM aside)."""
        return self.trunk.pairwise_positional_embedding.embedding.weight.dtype

    def lm_in_fp16(self, device: torch.device, dtype: torch.dtype | None = None) -> bool:
        """Whether the LM runs in fp16 on ``device`` in a model of ``dtype`` (default: :attr:`dtype`): on CUDA
        when the config has ``fp16_esm``, as the reference runs it, at every dtype but float64 (parity runs).
        Loaders build such an LM in fp16 from the start, so the device never holds a float32 copy of the
        3B LM (14 GB at peak instead of 8.4)."""
        dtype = dtype or self.dtype
        return device.type == "cuda" and self.config.fp16_esm and dtype != torch.float64

    def dtype_layout(self, device: torch.device, dtype: torch.dtype) -> dict[nn.Module, torch.dtype]:
        """The dtype of each module's own floating point tensors in a ``dtype`` model on ``device``: the
        float32 islands (and ``esm_s_combine``, which sets the sequence track's dtype) in float32 when
        ``dtype`` is a half one, the LM in fp16 where :meth:`lm_in_fp16`, everything else in ``dtype``."""
        island = torch.float32 if dtype in HALF_DTYPES else dtype
        layout = {module: dtype for module in self.modules()}
        for root in self.float32_islands():
            layout.update((module, island) for module in root.modules())
        layout[self] = island
        if self.lm_in_fp16(device, dtype):
            layout.update((module, torch.float16) for module in self.esm.modules())
        return layout

    def apply_dtype_layout(self, device: torch.device | None = None) -> None:
        """Cast each tensor, in place, to its :meth:`dtype_layout` dtype for :attr:`dtype` on ``device``
        (default: where the model is; loaders pass the device a meta-device model is built for)."""
        device = device or self.device
        self._convert(lambda t: t, None, device, self.dtype_layout(device, self.dtype))

    def _convert(self, fn, cast: torch.dtype | None, device: torch.device, layout: dict[nn.Module, torch.dtype]):
        """Apply ``fn`` (an ``nn.Module._apply`` conversion to ``device``) module by module, each floating
        point tensor ending in its ``layout`` dtype. A casting ``fn`` (``cast``) is replaced by a plain move,
        so a float32 island of a ``.half()`` model is never rounded through fp16 on the way."""
        for module, want in layout.items():

            def convert(t: torch.Tensor, want: torch.dtype = want) -> torch.Tensor:
                if cast is not None:
                    return t.to(device=device, dtype=want if t.is_floating_point() else t.dtype)
                out = fn(t)
                return out.to(want) if out.is_floating_point() and out.dtype != want else out

            module._apply(convert, recurse=False)

    def _apply(self, fn, recurse=True):
        # Every nn.Module conversion lands here (see the class docstring for what each gives).
        if not recurse:  # one module's own tensors, from _convert
            return super()._apply(fn, recurse)
        device, cast = conversion_target(fn, self.esm_s_combine)
        backend = backend_for_move(self._backend_choice, device)
        self._convert(fn, cast, device, self.dtype_layout(device, cast or self.dtype))
        _backend.set_backend(self, backend, device)
        return self

    def _finish(self, backend: str, device: torch.device) -> "ESMFold":
        self.apply_dtype_layout()  # a no-op when a loader built the model in its layout
        self.set_backend(backend)
        return self.eval()

    # ------------------------------------------------------------------------------------------
    # settings
    # ------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.esm_s_combine.device

    def set_backend(self, name: str | _backend.Backend) -> _backend.Backend:
        """Validate ``name`` for this model's device and hand it to every module (see :mod:`.backend`).
        Moving the model validates it again for the new device (``auto`` resolves anew)."""
        backend = _backend.set_backend(self, name, self.device)
        self._backend_choice = name if isinstance(name, str) else name.name
        return backend

    def set_chunk_size(self, chunk_size: int | None) -> None:
        """Cap on the rows per chunk of pair-wide work in the trunk (``None``: as the backend's launch plan
        decides from its memory budget; see :mod:`esmfold_fast.memory`)."""
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
        *,
        return_pair_outputs: bool = True,
        chain_index: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Fold a batch of AlphaFold2-indexed sequences ``aa`` [B, L] (0-20, 20 = X).

        ``mask`` [B, L] 1 = residue; ``residx`` [B, L] residue indices (default 0..L-1); ``masking_pattern``
        [B, L] 1 = replace by ``<mask>`` for the LM; ``num_recycles`` None = ``max_recycles`` trunk passes,
        N = N + 1 passes. Returns fair-esm's ``forward`` dict (pLDDT on 0-100, pTM per sequence).

        ``return_pair_outputs=False`` leaves out the [B, L, L, C] outputs ``s_z``, ``distogram_logits``,
        ``ptm_logits`` and ``aligned_confidence_probs`` (:data:`PAIR_OUTPUT_KEYS`), each freed as soon as
        pTM and PAE no longer need it (the distogram is never computed); every other output is the same,
        bit for bit.

        ``chain_index`` [B, L]: the 0-based chain of each residue, -1 for residues outside every chain
        (padding, a multimer's linker); :meth:`infer` passes it. Given, the chain-aware scores of
        :func:`~esmfold_fast.heads.chain_scores` are added, computed per item over the residues with
        ``chain_index >= 0`` while the aligned-error probabilities exist: ``ptm_no_linker`` [B],
        ``iptm`` [B] (AlphaFold-Multimer's interface pTM; NaN for single-chain items), ``chain_ptm``
        [B, C] and ``chain_plddt`` [B, C] (NaN past an item's own chains). ``ptm`` is unchanged: over
        all ``mask`` residues, linker included, as both references compute it.
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
            structure = self.trunk(s_s_0, None, aa, residx, mask, num_recycles=num_recycles)
            out = {k: structure[k] for k in STRUCTURE_KEYS}
            del structure
            release_freed_heap()
            return self._heads(out, aa, mask, residx, return_pair_outputs, chain_index)

    def _heads(
        self,
        out: dict[str, torch.Tensor],
        aa: torch.Tensor,
        mask: torch.Tensor,
        residx: torch.Tensor,
        return_pair_outputs: bool = True,
        chain_index: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        b, n = aa.shape
        if return_pair_outputs:
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
        if return_pair_outputs:
            out["ptm_logits"] = ptm_logits
        else:
            del out["s_z"]
        out.update(predicted_aligned_error(ptm_logits, no_bins=self.distogram_bins))
        out["ptm"] = ptm_per_sequence(ptm_logits, mask, probs=out["aligned_confidence_probs"])
        if chain_index is not None:
            chain_index = chain_index.to(aa.device).long().masked_fill(mask != 1, -1)
            out.update(
                chain_scores(
                    out["aligned_confidence_probs"], chain_index, out["plddt"], out["atom37_atom_exists"],
                    no_bins=self.distogram_bins,
                )
            )
        if not return_pair_outputs:
            del ptm_logits, out["aligned_confidence_probs"]
            release_freed_heap()
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
        *,
        return_pair_outputs: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Fold one or more sequences; a multimer is its chains joined by ``':'``.

        Chains are joined by ``chain_linker`` and chain i's residue indices are shifted by
        ``i * residue_index_offset``; linker atoms are masked out of ``atom37_atom_exists``. Sequences are
        upper-cased and letters outside the 20 amino acids read as X; other characters raise ``ValueError``.
        Returns fair-esm's output dict plus ``mean_plddt`` [B], ``chain_index`` [B, L] (-1 at padding;
        a linker residue has the chain before it) and the chain-aware scores ``ptm_no_linker``, ``iptm``
        (NaN for monomers), ``chain_ptm`` and ``chain_plddt`` (see :meth:`forward`), all over the real
        residues (linker and padding left out).
        ``return_pair_outputs=False``: without ``s_z``, ``distogram_logits``, ``ptm_logits`` and
        ``aligned_confidence_probs`` (see :meth:`forward`); positions, pLDDT, pTM and PAE are kept.
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
            aatype, mask=mask, residx=residx.long(), masking_pattern=masking_pattern, num_recycles=num_recycles,
            return_pair_outputs=return_pair_outputs,
            chain_index=chain_index.to(device).masked_fill(linker_mask != 1, -1),
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


__all__ = ["ESMFold", "PAIR_OUTPUT_KEYS"]
