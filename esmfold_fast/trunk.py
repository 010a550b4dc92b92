"""ESMFold's folding trunk: triangular self-attention blocks, recycling and the structure module call.

State-dict key names are transformers' ``EsmFoldingTrunk`` ones (``trunk.blocks.i.tri_att_start.mha.linear_q``
...), which are also fair-esm's, so the official checkpoints load unchanged.

The pair state ``z`` [B, L, L, c_z] dominates memory, so every pair-wide update is computed over row chunks
(the backend's :class:`~.memory.ChunkPlan`, decided once per pass from ``chunk_size`` and the memory budget)
and, under ``torch.no_grad()``, added into ``z`` in place: the widest temporaries are chunk-sized, never
``L x L x 4 c_z``. With autograd on, the same chunks are concatenated and added out of place so backward
sees unmodified inputs. Hot paths (LayerNorm, the attention core, triangle multiplication) go through the
backend ops (``self.ops``); gating and output projections stay in model code.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fastfold_kernels.triangle_multiplicative_update import TriMulWeights

from .backend import BackendModule
from .config import TrunkConfig
from .memory import ChunkPlan, release_freed_heap, spans
from .structure_module import StructureModule

# AlphaFold2 recycling distogram (supplement 1.10): 15 bins of the CB-CB distance between 3.375 and 21.375 A.
RECYCLE_BINS = 15
RECYCLE_MIN_BIN = 3.375
RECYCLE_MAX_BIN = 21.375
# Ideal CB from backbone N, CA, C (AlphaFold2 ``pseudo_beta`` from the idealised geometry, as in fair-esm).
CB_COEF_A, CB_COEF_B, CB_COEF_C = -0.58273431, 0.56802827, -0.54067466


def _inplace_ok() -> bool:
    """In-place residual updates are safe only when autograd records nothing."""
    return not torch.is_grad_enabled()


def add_rowwise_(
    z: torch.Tensor,
    update_rows: Callable[[slice], torch.Tensor],
    rows: int,
    transpose: bool = False,
    dropout: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Return ``z + U`` where ``U[:, r]`` (of ``z`` or, with ``transpose``, of ``z^T``) is ``update_rows(r)``.

    ``update_rows(r)`` must read only rows ``r`` of ``z`` (or of ``z^T``) plus tensors computed beforehand,
    so under no_grad each chunk is added into ``z`` in place as soon as it is computed. With autograd on (or
    with ``dropout``, which needs the whole update) the chunks are joined and added out of place.
    """
    view = z.transpose(1, 2) if transpose else z  # [B, L, L, C]
    n = view.shape[1]
    if _inplace_ok() and dropout is None:
        for r in spans(n, rows):
            view[:, r] += update_rows(r)
        return z
    update = torch.cat([update_rows(r) for r in spans(n, rows)], dim=1)
    if transpose:
        update = update.transpose(1, 2)
    if dropout is not None:  # in z's coordinates: its shared dim refers to z, not to the transposed view
        update = dropout(update)
    return z + update


def shared_dropout(x: torch.Tensor, p: float, shared_dim: int) -> torch.Tensor:
    """Dropout whose mask is shared along ``shared_dim`` (AlphaFold2's row/column-wise dropout)."""
    shape = list(x.shape)
    shape[shared_dim] = 1
    keep = F.dropout(x.new_ones(shape), p=p, training=True)
    return x * keep


class SequenceToPair(BackendModule):
    """Outer product and difference of projected sequence states, projected to the pair channel."""

    def __init__(self, sequence_state_dim: int, inner_dim: int, pairwise_state_dim: int):
        super().__init__()
        self.layernorm = nn.LayerNorm(sequence_state_dim)
        self.proj = nn.Linear(sequence_state_dim, inner_dim * 2, bias=True)
        self.o_proj = nn.Linear(2 * inner_dim, pairwise_state_dim, bias=True)
        self.inner_dim = inner_dim

    def add_to_(self, z: torch.Tensor, s: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
        """``z + o_proj(cat[q_j * k_i, q_j - k_i])`` for pair (i, j), computed row chunk by row chunk.

        The difference half is linear, so it splits into ``W_d q_j - W_d k_i``: two [B, L, c_z] tensors
        instead of a pair-wide ``L x L x inner`` input. Only the product half is evaluated per pair.
        """
        s = s.to(self.proj.weight.dtype)  # a float32 sequence track feeding a half-precision pair track
        h = self.ops.layer_norm(s, self.layernorm.weight, self.layernorm.bias, self.layernorm.eps)
        q, k = self.proj(h).chunk(2, dim=-1)  # [B, L, inner] each
        w_prod = self.o_proj.weight[:, : self.inner_dim]  # [c_z, inner]
        w_diff = self.o_proj.weight[:, self.inner_dim :]
        q_d = F.linear(q, w_diff, self.o_proj.bias)  # [B, L, c_z]; bias folded in once per j
        k_d = F.linear(k, w_diff)  # [B, L, c_z]
        n, c_z = z.shape[1], z.shape[-1]
        rows = plan.rows(n, n * max(self.inner_dim, c_z))

        def update(r: slice) -> torch.Tensor:
            prod = q[:, None, :, :] * k[:, r, None, :]  # [B, rows, L, inner]
            out = F.linear(prod, w_prod)  # [B, rows, L, c_z]
            out += q_d[:, None, :, :]
            out -= k_d[:, r, None, :]
            return out

        return add_rowwise_(z, update, rows)


class PairToSequence(BackendModule):
    """Per-head attention bias for the sequence attention, from the pair state."""

    def __init__(self, pairwise_state_dim: int, num_heads: int):
        super().__init__()
        self.layernorm = nn.LayerNorm(pairwise_state_dim)
        self.linear = nn.Linear(pairwise_state_dim, num_heads, bias=False)

    def forward(self, z: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
        """z [B, L, L, c_z] -> bias [B, H, L, L] (query, key), computed over row chunks."""
        b, n, _, c_z = z.shape
        bias = z.new_empty(b, self.linear.out_features, n, n)  # [B, H, L, L]
        for r in spans(n, plan.rows(n, n * c_z)):
            h = self.ops.layer_norm(z[:, r], self.layernorm.weight, self.layernorm.bias, self.layernorm.eps)
            bias[:, :, r, :] = self.linear(h).permute(0, 3, 1, 2)
        return bias


class SequenceSelfAttention(BackendModule):
    """Gated multi-head self-attention over residues with a per-head pair bias (ESMFold's sequence track).

    ``proj`` emits, per head, [q | k | v] side by side (fair-esm's layout), so q, k, v are strided views.
    The attention core is the backend's ``triangle_attention`` with a single row (I = 1).
    """

    def __init__(self, embed_dim: int, num_heads: int, head_width: int):
        super().__init__()
        if embed_dim != num_heads * head_width:
            raise ValueError(f"embed_dim {embed_dim} != num_heads {num_heads} x head_width {head_width}")
        self.embed_dim, self.num_heads, self.head_width = embed_dim, num_heads, head_width
        self.proj = nn.Linear(embed_dim, embed_dim * 3, bias=False)
        self.o_proj = nn.Linear(embed_dim, embed_dim, bias=True)
        self.g_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, bias: torch.Tensor) -> torch.Tensor:
        """x [B, L, C], mask [B, L] (1 = residue), bias [B, H, L, L] -> [B, L, C]."""
        b, n, _ = x.shape
        t = self.proj(x).view(b, 1, n, self.num_heads, 3 * self.head_width)  # [B, 1, L, H, 3D]
        q, k, v = t.split(self.head_width, dim=-1)  # [B, 1, L, H, D] each
        y = self.ops.triangle_attention(
            q, k, v, bias, mask=None if mask is None else mask[:, None, :], scale=self.head_width**-0.5
        )  # [B, 1, L, H, D]
        y = y.reshape(b, n, self.embed_dim)
        y = y * torch.sigmoid(self.g_proj(x))
        return self.o_proj(y)


class ResidueMLP(BackendModule):
    """Pre-LayerNorm two-layer ReLU MLP with a residual (keys ``mlp.0``, ``mlp.1``, ``mlp.3``)."""

    def __init__(self, embed_dim: int, inner_dim: int):
        super().__init__()
        # ReLU at index 2 keeps transformers' Sequential indices; their trailing Dropout is keyless.
        self.mlp = nn.Sequential(
            nn.LayerNorm(embed_dim), nn.Linear(embed_dim, inner_dim), nn.ReLU(), nn.Linear(inner_dim, embed_dim)
        )

    def _hidden_from_normed(self, h: torch.Tensor) -> torch.Tensor:
        fc1, fc2 = self.mlp[1], self.mlp[3]
        return fc2(torch.relu_(fc1(h)))

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP branch (without the residual) for ``x`` [..., C]."""
        ln = self.mlp[0]
        return self._hidden_from_normed(self.ops.layer_norm(x, ln.weight, ln.bias, ln.eps))

    def forward_sequence(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``s' = s + y`` then ``s' + MLP(s')``; the add is fused into the LayerNorm."""
        ln = self.mlp[0]
        h, s = self.ops.layer_norm(y, ln.weight, ln.bias, ln.eps, residual=s)
        return s + self._hidden_from_normed(h)

    def add_to_pair_(self, z: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
        """Pair transition ``z + MLP(z)`` over row chunks (the 4 c_z hidden is never pair-wide)."""
        n = z.shape[1]
        rows = plan.rows(n, n * self.mlp[1].out_features)
        return add_rowwise_(z, lambda r: self.update(z[:, r]), rows)


class TriangleMultiplicativeUpdate(BackendModule):
    """AlphaFold2 Algorithms 11 (outgoing edges) and 12 (incoming edges); transformers' key names."""

    def __init__(self, c_z: int, outgoing: bool):
        super().__init__()
        self.outgoing = outgoing
        self.linear_a_p = nn.Linear(c_z, c_z)
        self.linear_a_g = nn.Linear(c_z, c_z)
        self.linear_b_p = nn.Linear(c_z, c_z)
        self.linear_b_g = nn.Linear(c_z, c_z)
        self.linear_g = nn.Linear(c_z, c_z)
        self.linear_z = nn.Linear(c_z, c_z)
        self.layer_norm_in = nn.LayerNorm(c_z)
        self.layer_norm_out = nn.LayerNorm(c_z)

    def weights(self) -> TriMulWeights:
        return TriMulWeights(
            ln_in_weight=self.layer_norm_in.weight, ln_in_bias=self.layer_norm_in.bias,
            a_p_weight=self.linear_a_p.weight, a_p_bias=self.linear_a_p.bias,
            a_g_weight=self.linear_a_g.weight, a_g_bias=self.linear_a_g.bias,
            b_p_weight=self.linear_b_p.weight, b_p_bias=self.linear_b_p.bias,
            b_g_weight=self.linear_b_g.weight, b_g_bias=self.linear_b_g.bias,
            ln_out_weight=self.layer_norm_out.weight, ln_out_bias=self.layer_norm_out.bias,
            z_weight=self.linear_z.weight, z_bias=self.linear_z.bias,
            g_weight=self.linear_g.weight, g_bias=self.linear_g.bias,
        )  # fmt: skip

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None, chunk_size: int | None = None) -> torch.Tensor:
        """z [B, L, L, c_z], mask [B, L, L] or None -> the update [B, L, L, c_z] (the caller adds it)."""
        return self.ops.triangle_multiplicative_update(
            z, mask, self.weights(), outgoing=self.outgoing, eps=self.layer_norm_in.eps, chunk_size=chunk_size
        )

    def add_to_(
        self,
        z: torch.Tensor,
        mask: torch.Tensor | None,
        plan: ChunkPlan,
        dropout: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``z + update``. Under no_grad without dropout the update goes into ``z`` in place; a backend op
        that can add into z itself (``supports_add_into_z``) then never holds a pair-sized update."""
        op = self.ops.triangle_multiplicative_update
        if _inplace_ok() and dropout is None and getattr(op, "supports_add_into_z", False):
            return op(
                z, mask, self.weights(), outgoing=self.outgoing, eps=self.layer_norm_in.eps,
                chunk_size=plan.chunk_size, add_into_z=True,
            )  # fmt: skip
        update = self(z, mask, plan.chunk_size)
        if dropout is not None:
            return z + dropout(update)
        if _inplace_ok():
            return z.add_(update)
        return z + update


class TriangleMHA(nn.Module):
    """Gated attention projections of the triangle attention (``mha.linear_{q,k,v,o,g}``)."""

    def __init__(self, c_in: int, c_hidden: int, no_heads: int):
        super().__init__()
        self.c_hidden, self.no_heads = c_hidden, no_heads
        width = c_hidden * no_heads
        self.linear_q = nn.Linear(c_in, width, bias=False)
        self.linear_k = nn.Linear(c_in, width, bias=False)
        self.linear_v = nn.Linear(c_in, width, bias=False)
        self.linear_o = nn.Linear(width, c_in)
        self.linear_g = nn.Linear(c_in, width)

    def fused_qkvg(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One [4 H D, c_in] weight so q, k, v and the gate come from a single matmul per chunk."""
        w = torch.cat([self.linear_q.weight, self.linear_k.weight, self.linear_v.weight, self.linear_g.weight])
        zeros = self.linear_g.bias.new_zeros(3 * self.linear_g.bias.shape[0])
        return w, torch.cat([zeros, self.linear_g.bias])  # adding 0.0 leaves q, k, v bit-identical


class TriangleAttention(BackendModule):
    """AlphaFold2 Algorithms 13 (around the starting node) and 14 (around the ending node).

    The ending-node variant is the starting-node one on ``z^T``; it works on column chunks of ``z`` through a
    transposed view and adds its update back through the same view, so ``z`` is never copied transposed.
    """

    def __init__(self, c_in: int, c_hidden: int, no_heads: int, starting: bool, inf: float = 1e9):
        super().__init__()
        self.c_in, self.c_hidden, self.no_heads = c_in, c_hidden, no_heads
        self.starting, self.inf = starting, inf
        self.layer_norm = nn.LayerNorm(c_in)
        self.linear = nn.Linear(c_in, no_heads, bias=False)
        self.mha = TriangleMHA(c_in, c_hidden, no_heads)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.layer_norm(x, self.layer_norm.weight, self.layer_norm.bias, self.layer_norm.eps)

    def triangle_bias(self, zt: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
        """bias[b, h, q, k] = linear(LN(zt))[b, q, k, h] -> [B, H, L, L], built over row chunks of ``zt``."""
        b, n, _, c = zt.shape
        bias = zt.new_empty(b, self.no_heads, n, n)
        for r in spans(n, plan.rows(n, n * c)):
            bias[:, :, r, :] = self.linear(self._norm(zt[:, r])).permute(0, 3, 1, 2)
        return bias

    def add_to_(
        self,
        z: torch.Tensor,
        mask: torch.Tensor | None,
        plan: ChunkPlan,
        dropout: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``z + TriangleAttention(z)`` (z [B, L, L, c_in], mask [B, L, L] with 1 = attendable)."""
        zt = z if self.starting else z.transpose(1, 2)  # rows of zt are attention rows
        mt = None if mask is None else (mask if self.starting else mask.transpose(1, 2))
        bias = self.triangle_bias(zt, plan)  # [B, H, L, L]; from z before any row is updated
        b, n = z.shape[0], z.shape[1]
        w_qkvg, b_qkvg = self.mha.fused_qkvg()
        width = self.no_heads * self.c_hidden
        # Per row: 4 projections and the gated output, plus the H x L x L scores an unfused core materialises.
        rows = plan.rows(n, 5 * n * width, 2 * self.no_heads * n * n)

        def update(r: slice) -> torch.Tensor:
            x = self._norm(zt[:, r])  # [B, rows, L, c_in]
            qkvg = F.linear(x, w_qkvg, b_qkvg)  # [B, rows, L, 4 H D]
            q, k, v, g = qkvg.view(*qkvg.shape[:-1], 4, self.no_heads, self.c_hidden).unbind(-3)
            o = self.ops.triangle_attention(
                q, k, v, bias, mask=None if mt is None else mt[:, r], scale=self.c_hidden**-0.5
            )  # [B, rows, L, H, D]
            o = o.reshape(b, -1, n, width) * torch.sigmoid(g.reshape(b, -1, n, width))
            return self.mha.linear_o(o)

        return add_rowwise_(z, update, rows, transpose=not self.starting, dropout=dropout)


class TriangularSelfAttentionBlock(BackendModule):
    """One ESMFold folding block: sequence attention with pair bias, sequence MLP, sequence -> pair,
    triangle multiplication (outgoing, incoming), triangle attention (start, end), pair transition.

    Under ``torch.no_grad()`` the pair state passed in is updated in place and returned (the trunk owns it).
    """

    def __init__(self, config: TrunkConfig):
        super().__init__()
        c_s, c_z = config.sequence_state_dim, config.pairwise_state_dim
        seq_heads = c_s // config.sequence_head_width
        pair_heads = c_z // config.pairwise_head_width
        self.dropout = float(config.dropout)
        self.layernorm_1 = nn.LayerNorm(c_s)
        self.sequence_to_pair = SequenceToPair(c_s, c_z // 2, c_z)
        self.pair_to_sequence = PairToSequence(c_z, seq_heads)
        self.seq_attention = SequenceSelfAttention(c_s, seq_heads, config.sequence_head_width)
        self.tri_mul_out = TriangleMultiplicativeUpdate(c_z, outgoing=True)
        self.tri_mul_in = TriangleMultiplicativeUpdate(c_z, outgoing=False)
        self.tri_att_start = TriangleAttention(c_z, config.pairwise_head_width, pair_heads, starting=True)
        self.tri_att_end = TriangleAttention(c_z, config.pairwise_head_width, pair_heads, starting=False)
        self.mlp_seq = ResidueMLP(c_s, 4 * c_s)
        self.mlp_pair = ResidueMLP(c_z, 4 * c_z)

    def _drop(self, shared_dim: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Row (shared_dim 2) / column (shared_dim 1) dropout of an update, only when training with p > 0."""
        p = 2 * self.dropout
        if not self.training or p == 0.0:
            return None
        return lambda u: shared_dropout(u, p, shared_dim)

    def forward(
        self,
        sequence_state: torch.Tensor,
        pairwise_state: torch.Tensor,
        mask: torch.Tensor | None = None,
        chunk_size: int | None = None,
        plan: ChunkPlan | None = None,
        **_unused,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """s [B, L, c_s], z [B, L, L, c_z], mask [B, L] (1 = residue; None: no padding) -> (s, z).

        ``plan``: the pass's row-chunk plan (the trunk decides it once per pass); by default this backend's
        plan for ``z`` with ``chunk_size``."""
        s, z = sequence_state, pairwise_state
        if s.dim() != 3 or z.dim() != 4 or z.shape[1] != s.shape[1] or z.shape[2] != s.shape[1]:
            raise ValueError(f"expected s [B, L, c_s] and z [B, L, L, c_z], got {tuple(s.shape)}, {tuple(z.shape)}")
        if mask is not None:
            mask = mask.to(z.dtype)
        if plan is None:
            plan = self.ops.chunk_plan(z, chunk_size)

        # Sequence track: attention biased by the pair state, then the MLP.
        bias = self.pair_to_sequence(z, plan)  # [B, H, L, L]
        ln = self.layernorm_1
        y = self.seq_attention(self.ops.layer_norm(s, ln.weight, ln.bias, ln.eps), mask, bias)
        if self.training and self.dropout > 0:
            y = F.dropout(y, self.dropout, training=True)
        del bias
        s = self.mlp_seq.forward_sequence(s, y)

        # Pair track.
        z = self.sequence_to_pair.add_to_(z, s, plan)
        tri_mask = None if mask is None else mask[:, :, None] * mask[:, None, :]  # [B, L, L]
        z = self.tri_mul_out.add_to_(z, tri_mask, plan, dropout=self._drop(2))
        z = self.tri_mul_in.add_to_(z, tri_mask, plan, dropout=self._drop(1))
        z = self.tri_att_start.add_to_(z, tri_mask, plan, dropout=self._drop(2))
        z = self.tri_att_end.add_to_(z, tri_mask, plan, dropout=self._drop(1))
        z = self.mlp_pair.add_to_pair_(z, plan)
        return s, z


class RelativePosition(nn.Module):
    """Clipped relative residue-index embedding; index 0 is reserved for pairs involving padding."""

    def __init__(self, config: TrunkConfig):
        super().__init__()
        self.bins = config.position_bins
        self.embedding = nn.Embedding(2 * self.bins + 2, config.pairwise_state_dim)

    def indices(self, residue_index: torch.Tensor, mask: torch.Tensor | None, rows: slice = slice(None)) -> torch.Tensor:
        """Embedding indices [B, rows, L]: clamp(r_j - r_i) + bins + 1, or 0 where i or j is padding."""
        if residue_index.dtype != torch.long:
            raise ValueError(f"residue_index has dtype {residue_index.dtype}, expected torch.long")
        diff = residue_index[:, None, :] - residue_index[:, rows, None]
        diff = diff.clamp(-self.bins, self.bins) + (self.bins + 1)
        if mask is not None:
            pair = (mask[:, rows, None] != 0) & (mask[:, None, :] != 0)
            diff = diff.masked_fill(~pair, 0)
        return diff

    def forward(self, residue_index: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """residue_index [B, L] long, mask [B, L] -> [B, L, L, c_z]."""
        return self.embedding(self.indices(residue_index, mask))


def recycle_distogram_bins(positions: torch.Tensor) -> torch.Tensor:
    """Recycling distogram of the ideal CB (AlphaFold2 Algorithm 32): backbone [B, L, 3(N, CA, C), 3] ->
    bin indices [B, L, L] in [0, 15)."""
    # Boundaries in float32 like both reference implementations, so bins agree at any model dtype.
    boundaries = torch.linspace(RECYCLE_MIN_BIN, RECYCLE_MAX_BIN, RECYCLE_BINS - 1, dtype=torch.float32)
    boundaries = (boundaries**2).to(positions.device)
    n, ca, c = positions.unbind(-2)
    b = ca - n
    c = c - ca
    a = torch.linalg.cross(b, c, dim=-1)
    cb = CB_COEF_A * a + CB_COEF_B * b + CB_COEF_C * c + ca  # [B, L, 3]
    d2 = (cb[..., None, :, :] - cb[..., :, None, :]).pow(2).sum(dim=-1, keepdim=True)  # [B, L, L, 1]
    return (d2 > boundaries).sum(dim=-1)


class FoldingTrunk(BackendModule):
    """The ESMFold trunk with recycling (AlphaFold2 Algorithm 2's recycling, ESMFold's variant).

    ``num_recycles=None`` runs ``max_recycles`` passes; an explicit N runs N + 1. All passes but the last run
    without autograd.
    """

    def __init__(self, config: TrunkConfig):
        super().__init__()
        config.validate()
        self.config = config
        c_s, c_z = config.sequence_state_dim, config.pairwise_state_dim
        self.pairwise_positional_embedding = RelativePosition(config)
        self.blocks = nn.ModuleList([TriangularSelfAttentionBlock(config) for _ in range(config.num_blocks)])
        self.recycle_bins = RECYCLE_BINS
        self.recycle_s_norm = nn.LayerNorm(c_s)
        self.recycle_z_norm = nn.LayerNorm(c_z)
        self.recycle_disto = nn.Embedding(RECYCLE_BINS, c_z)
        with torch.no_grad():
            self.recycle_disto.weight[0].zero_()
        self.structure_module = StructureModule(config.structure_module)
        self.trunk2sm_s = nn.Linear(c_s, config.structure_module.sequence_dim)
        self.trunk2sm_z = nn.Linear(c_z, config.structure_module.pairwise_dim)
        self.chunk_size = config.chunk_size

    def set_chunk_size(self, chunk_size: int | None) -> None:
        """Set ``chunk_size``, the most pair rows per chunk (see :mod:`esmfold_fast.memory`)."""
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size}")
        self.chunk_size = chunk_size

    def num_passes(self, num_recycles: int | None) -> int:
        if num_recycles is None:
            return max(1, self.config.max_recycles)
        if num_recycles < 0:
            raise ValueError(f"number of recycles must not be negative, got {num_recycles}")
        return num_recycles + 1

    def _pair_input(
        self,
        prev_z: torch.Tensor | None,
        bins: torch.Tensor,
        pair_feats: torch.Tensor | None,
        residx: torch.Tensor,
        mask: torch.Tensor,
        like: torch.Tensor,
        plan: ChunkPlan,
    ) -> torch.Tensor:
        """z = pair_feats + (LN(prev_z) + disto(bins)) + relpos, row chunk by row chunk.

        On the first pass ``prev_z`` is zero, whose LayerNorm is exactly the norm's bias. Under no_grad the
        result overwrites ``prev_z`` (not needed afterwards) instead of allocating a second pair tensor.
        """
        b, n = residx.shape
        c_z = self.config.pairwise_state_dim
        if prev_z is not None and _inplace_ok():
            out = prev_z
        else:
            out = like.new_empty(b, n, n, c_z, dtype=self.recycle_z_norm.weight.dtype)  # the pair track's dtype
        norm = self.recycle_z_norm
        for r in spans(n, plan.rows(n, n * c_z)):
            if prev_z is None:
                t = self.recycle_disto(bins[:, r]) + norm.bias
            else:
                t = self.ops.layer_norm(prev_z[:, r], norm.weight, norm.bias, norm.eps)
                t = t + self.recycle_disto(bins[:, r])
            if pair_feats is not None:
                t = pair_feats[:, r] + t
            t += self.pairwise_positional_embedding.embedding(
                self.pairwise_positional_embedding.indices(residx, mask, r)
            )
            out[:, r] = t
        return out

    @staticmethod
    def _padding_mask(mask: torch.Tensor) -> torch.Tensor | None:
        """The mask the blocks take: None without padding, so every op skips it (no [B, L, L] pair mask, no
        bias buffer). Decided once per fold: one host sync instead of one per block."""
        return None if bool(mask.all()) else mask

    @staticmethod
    def _linear_in_its_dtype(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """``linear(x)`` in the linear's own dtype (float32 islands of a bfloat16 model)."""
        return linear(x.to(linear.weight.dtype))

    def _structure_pair(self, z: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
        """``trunk2sm_z(z)`` [B, L, L, c_z_sm] in the structure module's dtype, row chunk by row chunk so
        no cast copy of z is ever pair-wide."""
        b, n = z.shape[:2]
        lin = self.trunk2sm_z
        out = z.new_empty(b, n, n, lin.out_features, dtype=lin.weight.dtype)
        for r in spans(n, plan.rows(n, n * max(z.shape[-1], lin.out_features))):
            out[:, r] = self._linear_in_its_dtype(lin, z[:, r])
        return out

    def forward(
        self,
        seq_feats: torch.Tensor,
        pair_feats: torch.Tensor | None,
        true_aa: torch.Tensor,
        residx: torch.Tensor,
        mask: torch.Tensor,
        num_recycles: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """seq_feats [B, L, c_s], pair_feats [B, L, L, c_z] or None (zeros), true_aa [B, L], residx [B, L]
        long, mask [B, L] -> the structure module's outputs plus ``s_s`` [B, L, c_s], ``s_z`` [B, L, L, c_z]."""
        passes = self.num_passes(num_recycles)
        mask_f = mask.to(seq_feats.dtype)
        block_mask = self._padding_mask(mask_f)
        b, n, _ = seq_feats.shape
        prev_s = prev_z = None
        bins = torch.zeros(b, n, n, dtype=torch.long, device=seq_feats.device)
        structure: dict[str, torch.Tensor] = {}
        for i in range(passes):
            with torch.set_grad_enabled(torch.is_grad_enabled() and i == passes - 1):
                ln = self.recycle_s_norm
                if prev_s is None:
                    s = seq_feats + ln.bias  # LN of a zero state is its bias
                else:
                    s = seq_feats + self.ops.layer_norm(prev_s.detach(), ln.weight, ln.bias, ln.eps)
                # One plan per pass, from the memory free before its pair state is built.
                plan = self.ops.chunk_plan(self.recycle_z_norm.weight, self.chunk_size)
                z = self._pair_input(
                    None if prev_z is None else prev_z.detach(), bins, pair_feats, residx, mask_f, seq_feats, plan
                )
                prev_z = None  # its buffer is z now under no_grad
                for block in self.blocks:
                    s, z = block(s, z, mask=block_mask, plan=plan)
                structure = self.structure_module(
                    {"single": self._linear_in_its_dtype(self.trunk2sm_s, s), "pair": self._structure_pair(z, plan)},
                    true_aa,
                    mask_f,
                    pair_is_scratch=_inplace_ok(),
                )
                prev_s, prev_z = s, z
                release_freed_heap()  # the structure module's pair-sized temporaries
                if i < passes - 1:
                    bins = recycle_distogram_bins(structure["positions"][-1][:, :, :3].detach())
        structure["s_s"] = prev_s
        structure["s_z"] = prev_z
        return structure


def init_trunk_weights_(trunk: FoldingTrunk, generator: torch.Generator | None = None) -> None:
    """Sane non-zero weights for benchmarks: fan-in normal weights, unit LayerNorms, small biases.

    The released model zero-initialises residual outputs before training; a benchmark wants every path to
    carry signal, so here every weight is drawn (scaled by 1/sqrt(fan_in), outputs of residual branches
    further by 1/sqrt(#blocks) so the state stays O(1) through deep stacks).
    """
    scale_out = 1.0 / math.sqrt(max(1, len(trunk.blocks)))
    with torch.no_grad():
        for name, p in trunk.named_parameters():
            if name.startswith("structure_module."):
                continue
            if p.dim() >= 2:
                std = 1.0 / math.sqrt(p.shape[-1])
                if name.endswith(("o_proj.weight", "linear_o.weight", "linear_z.weight", "mlp.3.weight")):
                    std *= scale_out
                p.normal_(0.0, std, generator=generator)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=generator)
