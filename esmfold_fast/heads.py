"""ESMFold's output heads: distogram, pLDDT, pTM and predicted aligned error.

Semantics are fair-esm's (``esm/esmfold/v1/esmfold.py``, ``categorical_mixture.py``) and OpenFold's confidence
helpers (``compute_tm``, ``compute_predicted_aligned_error``; AlphaFold2 supplement 1.9.6-1.9.7): pLDDT is the
mean of a 50-bin categorical over [0, 1], scaled here to 0-100 as fair-esm does; pTM is computed per sequence
over its true length; PAE uses 64 bins of width 31/62 Angstrom.

Chain-aware scores (:func:`chain_scores`) follow AlphaFold-Multimer / current OpenFold
(``compute_tm(..., asym_id=..., interface=True)``, d0 from the weighted residue count): ipTM, pTM without
a multimer's linker and per-chain pTM, over the real residues only.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .memory import HEAD_CHUNK_ELEMENTS, rows_per_chunk, spans

DISTOGRAM_BINS = 64
LDDT_BINS = 50
PAE_MAX_BIN = 31  # Angstrom; the last bin is open-ended


def lddt_head(c_s: int, hidden: int, bins: int = LDDT_BINS) -> nn.Sequential:
    """The pLDDT head (keys ``lddt_head.{0..3}``): LayerNorm then three Linears with no activation, as
    released; outputs 37 atoms x ``bins`` logits per residue."""
    return nn.Sequential(nn.LayerNorm(c_s), nn.Linear(c_s, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 37 * bins))


def pair_linear(head: nn.Linear, z: torch.Tensor) -> torch.Tensor:
    """``head(z)`` [B, L, L, out] in the head's dtype, over row chunks of z, so a cast copy of z (bf16 trunk,
    float32 head) is never pair-wide."""
    b, n = z.shape[:2]
    if torch.is_grad_enabled():
        return head(z.to(head.weight.dtype))
    out = z.new_empty(b, n, n, head.out_features, dtype=head.weight.dtype)
    for r in spans(n, rows_per_chunk(n, n * max(z.shape[-1], head.out_features), budget=HEAD_CHUNK_ELEMENTS)):
        out[:, r] = head(z[:, r].to(head.weight.dtype))
    return out


def symmetrize_(x: torch.Tensor) -> torch.Tensor:
    """``x <- (x + x^T) / 2`` over dims 1, 2 of ``x`` [B, L, L, C], in place tile pair by tile pair.

    Each tile's mean is computed before either of its two places is written, and ``a + b`` is
    ``b + a`` in floating point, so the result is bit-identical to the out-of-place form.
    """
    n = x.shape[1]
    block = max(1, int(math.isqrt(max(1, HEAD_CHUNK_ELEMENTS // max(1, x.shape[0] * x.shape[-1])))))
    for i0 in range(0, n, block):
        for j0 in range(i0, n, block):
            upper = x[:, i0 : i0 + block, j0 : j0 + block]  # [B, bi, bj, C]
            lower = x[:, j0 : j0 + block, i0 : i0 + block]  # [B, bj, bi, C]
            mean = (upper + lower.transpose(1, 2)) / 2
            upper.copy_(mean)
            lower.copy_(mean.transpose(1, 2))
    return x


def symmetric_distogram_logits(head: nn.Linear, z: torch.Tensor) -> torch.Tensor:
    """Distogram logits [B, L, L, bins], symmetrised over (i, j) like both references; without autograd
    one logits tensor is all that is allocated."""
    logits = pair_linear(head, z)
    if torch.is_grad_enabled():
        return (logits + logits.transpose(1, 2)) / 2
    return symmetrize_(logits)


def categorical_mean(logits: torch.Tensor, start: float = 0.0, end: float = 1.0) -> torch.Tensor:
    """Expected value of a categorical over equal bins of [start, end] (``logits [..., bins]`` -> [...])."""
    n = logits.shape[-1]
    edges = torch.linspace(start, end, n + 1, device=logits.device, dtype=logits.dtype)
    centers = (edges[:-1] + edges[1:]) / 2
    return logits.softmax(-1) @ centers


def plddt_from_logits(lddt_logits: torch.Tensor) -> torch.Tensor:
    """pLDDT on 0-100 from the last block's head logits ``[B, L, 37, bins]`` -> [B, L, 37]."""
    return 100 * categorical_mean(lddt_logits)


def _pae_bin_centers(no_bins: int, max_bin: float, device) -> torch.Tensor:
    """Bin centres [no_bins] in float32, as OpenFold's helpers make them (so float64 models agree exactly)."""
    boundaries = torch.linspace(0, max_bin, steps=no_bins - 1, device=device, dtype=torch.float32)
    step = boundaries[1] - boundaries[0]
    centers = boundaries + step / 2
    return torch.cat([centers, (centers[-1] + step).unsqueeze(-1)])


def predicted_aligned_error(
    logits: torch.Tensor, max_bin: float = PAE_MAX_BIN, no_bins: int = DISTOGRAM_BINS
) -> dict[str, torch.Tensor]:
    """AlphaFold2's predicted aligned error from pTM-head logits [B, L, L, no_bins].

    Returns ``aligned_confidence_probs`` [B, L, L, no_bins], ``predicted_aligned_error`` [B, L, L] (Angstrom)
    and ``max_predicted_aligned_error`` (scalar, the last bin centre).
    """
    probs = torch.softmax(logits, dim=-1)
    centers = _pae_bin_centers(no_bins, max_bin, logits.device).to(logits.dtype)
    return {
        "aligned_confidence_probs": probs,
        "predicted_aligned_error": probs @ centers,
        "max_predicted_aligned_error": centers[-1],
    }


def compute_tm(
    logits: torch.Tensor,
    residue_weights: torch.Tensor | None = None,
    max_bin: float = PAE_MAX_BIN,
    no_bins: int = DISTOGRAM_BINS,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Predicted TM-score (AlphaFold2 supplement 1.9.7, eq. 40) of one structure: logits [N, N, no_bins]."""
    return tm_from_probs(torch.softmax(logits, dim=-1), residue_weights, max_bin, no_bins, eps)


def tm_from_probs(
    probs: torch.Tensor,
    residue_weights: torch.Tensor | None = None,
    max_bin: float = PAE_MAX_BIN,
    no_bins: int = DISTOGRAM_BINS,
    eps: float = 1e-8,
) -> torch.Tensor:
    """:func:`compute_tm` from the aligned-error bin probabilities [N, N, no_bins] (the softmax the PAE
    output already holds, so no second pair-sized softmax is made).

    d0 uses N clipped below at 19; the score is the best over alignment anchors i of the weighted mean over
    j of the expected TM term.
    """
    n = probs.shape[-2]
    if residue_weights is None:
        residue_weights = probs.new_ones(n)
    centers = _pae_bin_centers(no_bins, max_bin, probs.device)
    d0 = 1.24 * (max(n, 19) - 15) ** (1.0 / 3) - 1.8
    tm_per_bin = (1.0 / (1 + centers**2 / d0**2)).to(probs.dtype)  # [no_bins]; float32 like OpenFold
    term = probs @ tm_per_bin  # [N, N]
    per_anchor = term @ (residue_weights / (eps + residue_weights.sum()))  # [N]
    weighted = per_anchor * residue_weights
    return per_anchor[torch.argmax(weighted)]


def ptm_per_sequence(
    ptm_logits: torch.Tensor, mask: torch.Tensor, probs: torch.Tensor | None = None
) -> torch.Tensor:
    """pTM of each sequence of a padded batch over its true length (fair-esm): [B, L, L, bins] -> [B].

    ``probs``: ``softmax(ptm_logits)`` when the caller has it (the softmax runs per (i, j), so a sequence's
    [:n, :n] block of it is the softmax of its own logits).
    """
    lengths = mask.to(torch.int64).sum(1).tolist()
    if probs is None:
        return torch.stack([compute_tm(logits[:n, :n]) for logits, n in zip(ptm_logits, lengths)])
    return torch.stack([tm_from_probs(p[:n, :n]) for p, n in zip(probs, lengths)])


def _tm_per_bin(n: int, max_bin: float, no_bins: int, device, dtype) -> torch.Tensor:
    """TM-score term of each aligned-error bin for ``n`` residues (d0 of ``max(n, 19)``, as OpenFold)."""
    centers = _pae_bin_centers(no_bins, max_bin, device)
    d0 = 1.24 * (max(n, 19) - 15) ** (1.0 / 3) - 1.8
    return (1.0 / (1 + centers**2 / d0**2)).to(dtype)


def _tm_terms(probs: torch.Tensor, index: torch.Tensor, tm_per_bin: torch.Tensor) -> torch.Tensor:
    """Expected TM term ``E[f(e_ij)]`` [n, n] over the residues ``index`` [n] of ``probs`` [L, L, bins].

    A contiguous ``index`` is sliced (no copy); otherwise rows are gathered a chunk at a time, so no
    [n, n, bins] copy of the probabilities is ever made.
    """
    n = int(index.numel())
    first = int(index[0]) if n else 0
    if n and int(index[-1]) - first + 1 == n:  # sorted and unique, so contiguous
        block = probs[first : first + n, first : first + n]
        out = probs.new_empty(n, n)
        for r in spans(n, rows_per_chunk(n, n * probs.shape[-1], budget=HEAD_CHUNK_ELEMENTS)):
            out[r] = block[r] @ tm_per_bin
        return out
    out = probs.new_empty(n, n)
    for r in spans(n, rows_per_chunk(n, max(n, probs.shape[0]) * probs.shape[-1], budget=HEAD_CHUNK_ELEMENTS)):
        rows = probs.index_select(0, index[r]).index_select(1, index)  # [r, n, bins]
        out[r] = rows @ tm_per_bin
    return out


def chain_tm_scores(
    probs: torch.Tensor,
    chain: torch.Tensor,
    max_bin: float = PAE_MAX_BIN,
    no_bins: int = DISTOGRAM_BINS,
    eps: float = 1e-8,
) -> dict[str, torch.Tensor]:
    """Chain-aware TM scores of ONE structure from its aligned-error probabilities ``probs`` [L, L, bins].

    ``chain`` [L]: the 0-based chain of each residue, -1 for residues that do not count (padding, the
    poly-G linker between chains). Only residues with ``chain >= 0`` ("real" residues, n of them) enter
    any score. OpenFold's ``compute_tm`` semantics with residue weights 1 on real residues, 0 elsewhere:
    for anchor i, ``per_i = sum_j m_ij E[f(e_ij)] / (eps + sum_j m_ij)``, the score is ``max_i per_i``.

    Returns (0-d / [C] tensors in ``probs``' dtype):

    - ``ptm_no_linker``: pTM over the real residues (m_ij = 1), d0 from n. For a monomer without padding
      inside it, this is the model's ``ptm``.
    - ``iptm``: AlphaFold-Multimer's interface pTM (``compute_tm(..., asym_id=chain, interface=True)``):
      m_ij = [chain_i != chain_j], d0 from n. NaN when fewer than two chains have real residues.
    - ``chain_ptm`` [C] (C = ``chain.max() + 1``): pTM of each chain's own sub-block, d0 from the chain's
      length; NaN for a chain without real residues.
    """
    real = torch.nonzero(chain >= 0).flatten()
    n = int(real.numel())
    n_chains = int(chain.max()) + 1 if n else 0
    nan = probs.new_tensor(float("nan"))
    if n == 0:
        return {"ptm_no_linker": nan, "iptm": nan, "chain_ptm": probs.new_empty(0)}
    term = _tm_terms(probs, real, _tm_per_bin(n, max_bin, no_bins, probs.device, probs.dtype))  # [n, n]
    ptm_no_linker = (term.sum(1) / (eps + n)).max()
    asym = chain[real]
    present = torch.unique(asym)
    if present.numel() > 1:
        pair = (asym[:, None] != asym[None, :]).to(term.dtype)  # [n, n] interface pairs
        iptm = ((term * pair).sum(1) / (eps + pair.sum(1))).max()
    else:
        iptm = nan
    chain_ptm = probs.new_full((n_chains,), float("nan"))
    if present.numel() == 1:
        chain_ptm[int(present[0])] = ptm_no_linker  # one chain: its sub-block is the whole
    else:
        for c in present.tolist():
            idx = real[asym == c]
            m = int(idx.numel())
            term_c = _tm_terms(probs, idx, _tm_per_bin(m, max_bin, no_bins, probs.device, probs.dtype))
            chain_ptm[c] = (term_c.sum(1) / (eps + m)).max()
    return {"ptm_no_linker": ptm_no_linker, "iptm": iptm, "chain_ptm": chain_ptm}


def chain_scores(
    probs: torch.Tensor,
    chain_index: torch.Tensor,
    plddt: torch.Tensor | None = None,
    atom_exists: torch.Tensor | None = None,
    max_bin: float = PAE_MAX_BIN,
    no_bins: int = DISTOGRAM_BINS,
) -> dict[str, torch.Tensor]:
    """:func:`chain_tm_scores` per batch item (items may differ in chain layout), stacked.

    ``probs`` [B, L, L, bins]; ``chain_index`` [B, L] (-1: residue outside every chain: padding, linker).
    Returns ``ptm_no_linker`` [B], ``iptm`` [B] (NaN for single-chain items) and ``chain_ptm`` [B, C]
    (C = the most chains of any item, NaN past an item's own). With ``plddt`` [B, L, 37] and
    ``atom_exists`` [B, L, 37] also ``chain_plddt`` [B, C]: the mean pLDDT over each chain's atoms (the
    per-chain ``mean_plddt``; NaN for a chain without atoms, e.g. all ``X``).
    """
    b = probs.shape[0]
    chain_index = chain_index.to(probs.device).long()
    n_chains = max(1, int(chain_index.max()) + 1) if chain_index.numel() else 1
    items = [chain_tm_scores(probs[k], chain_index[k], max_bin, no_bins) for k in range(b)]
    chain_ptm = probs.new_full((b, n_chains), float("nan"))
    for k, item in enumerate(items):
        chain_ptm[k, : item["chain_ptm"].numel()] = item["chain_ptm"]
    out = {
        "ptm_no_linker": torch.stack([item["ptm_no_linker"] for item in items]),
        "iptm": torch.stack([item["iptm"] for item in items]),
        "chain_ptm": chain_ptm,
    }
    if plddt is not None and atom_exists is not None:
        one_hot = (chain_index[..., None] == torch.arange(n_chains, device=chain_index.device)).to(plddt.dtype)
        exists = atom_exists.to(plddt.dtype)
        total = torch.einsum("blc,bla->bc", one_hot, plddt * exists)  # [B, C]
        count = torch.einsum("blc,bla->bc", one_hot, exists)
        out["chain_plddt"] = total / count  # 0 / 0 = NaN for a chain without atoms
    return out
