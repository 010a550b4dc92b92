"""Randomised transformers ``EsmForProteinFolding`` peers for the ESMFold parity and loading tests."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import EsmConfig, EsmForProteinFolding
from transformers.models.esm.openfold_utils import residue_constants as hf_rc

from _util import randomize_
from esmfold_fast.alphabet import Alphabet

# A small LM whose head dim is 24 (not a power of two), as the 35M ESM-2 has.
LM = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=192)
REDUCED_TRUNK = {
    "num_blocks": 2, "sequence_state_dim": 64, "pairwise_state_dim": 32, "sequence_head_width": 16,
    "pairwise_head_width": 16, "max_recycles": 2,
    "structure_module": {"sequence_dim": 32, "pairwise_dim": 16, "ipa_dim": 8, "resnet_dim": 16,
                         "num_heads_ipa": 4, "num_blocks": 3},
}  # fmt: skip
FULL_TRUNK = {"num_blocks": 1, "sequence_state_dim": 1024, "pairwise_state_dim": 128, "max_recycles": 2}


def hf_folding_model(trunk: dict, seed: int = 0) -> EsmForProteinFolding:
    """An ``EsmForProteinFolding`` with EVERY parameter randomised (zero-initialised layers included)."""
    config = EsmConfig(
        vocab_size=33, position_embedding_type="rotary", token_dropout=True, is_folding_model=True,
        pad_token_id=1, mask_token_id=32, layer_norm_eps=1e-5, emb_layer_norm_before=False,
        vocab_list=Alphabet().all_toks, max_position_embeddings=1026,
        esmfold_config={"trunk": trunk, "fp16_esm": True}, **LM,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = EsmForProteinFolding(config).eval()
    randomize_(model, seed=seed)
    return model


def save_hf(model: EsmForProteinFolding, directory: Path, bin_format: bool = False) -> Path:
    """``save_pretrained``; with ``bin_format`` the weights are rewritten as ``pytorch_model.bin``."""
    model.save_pretrained(directory)
    if bin_format:
        from safetensors.torch import load_file

        st = directory / "model.safetensors"
        torch.save(dict(load_file(str(st))), directory / "pytorch_model.bin")
        os.remove(st)
    return directory


def encode(sequences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """aatype and mask [B, L] the way transformers' ``infer`` builds them (padded with 0)."""
    n = max(len(s) for s in sequences)
    aatype = torch.zeros(len(sequences), n, dtype=torch.long)
    mask = torch.zeros(len(sequences), n, dtype=torch.long)
    for i, s in enumerate(sequences):
        aatype[i, : len(s)] = torch.tensor([hf_rc.restype_order_with_x.get(a, 20) for a in s])
        mask[i, : len(s)] = 1
    return aatype, mask


def random_sequence(n: int, gen: torch.Generator) -> str:
    letters = "ACDEFGHIKLMNPQRSTVWY"
    return "".join(letters[i] for i in torch.randint(0, 20, (n,), generator=gen).tolist())
