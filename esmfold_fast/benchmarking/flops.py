"""Analytic FLOP and memory-traffic model of ESMFold, per component, as a function of L.

Used by ``esmfold-fast bench`` (achieved GFLOP/s, extrapolation to the released shape), the
``benchmarks/`` suite (``extra_info``) and ``profiling/flops.py`` (the printed table).

Counting rules
  * a matrix product of [n, k] x [k, m] costs ``2 n k m`` FLOPs (one multiply and one add);
  * elementwise work is counted per element: LayerNorm 8, softmax 5 per logit, sigmoid gate 5,
    ReLU / residual add / mask 1 — small next to the matmuls, kept so the memory-bound parts are visible;
  * ``bytes`` is the traffic of a *fused* implementation: every stage reads its inputs and weights
    once and writes its outputs once (no materialised attention logits), at ``elem_bytes`` per value.
    Unfused PyTorch moves several times more; the ratio FLOPs / bytes says which stages are memory bound.

Check (REFERENCE.md section 3): a trunk block is about 1536 L^3 + 1.0e6 L^2 FLOPs (the cubic part is the
two triangle multiplications, 2 L^3 c_h each, and the two triangle attentions, 4 L^3 H d each);
esmfold_v1 at L=384 with 4 trunk passes is about 4.6e13 FLOPs; the ESM-2 3B language model 2.3e12.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..config import ESM2Config, ESMFoldConfig, StructureModuleConfig, TrunkConfig

# Per-element costs of the non-matmul work (see the module docstring).
_LN = 8.0
_SOFTMAX = 5.0
_GATE = 5.0


@dataclass(frozen=True)
class Cost:
    """FLOPs and fused-implementation memory traffic (bytes) of one piece of work."""

    flops: float = 0.0
    bytes: float = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.flops + other.flops, self.bytes + other.bytes)

    def __mul__(self, k: float) -> "Cost":
        return Cost(self.flops * k, self.bytes * k)

    __rmul__ = __mul__

    @property
    def intensity(self) -> float:
        """FLOPs per byte moved (arithmetic intensity)."""
        return self.flops / self.bytes if self.bytes else float("inf")


def total(costs: Mapping[str, Cost]) -> Cost:
    out = Cost()
    for c in costs.values():
        out = out + c
    return out


def linear_cost(rows: float, d_in: int, d_out: int, eb: int) -> Cost:
    """y = x W^T + b over ``rows`` rows: [rows, d_in] -> [rows, d_out]."""
    return Cost(2.0 * rows * d_in * d_out, eb * (rows * d_in + d_in * d_out + rows * d_out))


def layer_norm_cost(rows: float, dim: int, eb: int) -> Cost:
    return Cost(_LN * rows * dim, eb * 2 * rows * dim)


def _elementwise(n: float, per_elem: float, eb: int, tensors: int = 3) -> Cost:
    """``tensors`` reads+writes of ``n`` values (a gated residual reads two and writes one)."""
    return Cost(per_elem * n, eb * tensors * n)


def attention_cost(groups: float, lq: int, lk: int, heads: int, head_dim: int, eb: int,
               bias_values: float = 0.0) -> Cost:
    """softmax(q k^T + bias) v for ``groups`` independent rows of ``heads`` heads (flash style: the
    logits never leave the chip). ``bias_values`` is the number of bias values read once."""
    logits = groups * heads * lq * lk
    flops = 4.0 * logits * head_dim + _SOFTMAX * logits
    traffic = eb * (groups * heads * head_dim * (lq + 2 * lk + lq) + bias_values)
    return Cost(flops, traffic)


# --------------------------------------------------------------------------------------- ESM-2
def esm2_layer_costs(L: int, cfg: ESM2Config, elem_bytes: int = 4) -> dict[str, Cost]:
    """One pre-LN transformer layer of ESM-2 over L residues (L + 2 tokens with <cls> and <eos>)."""
    t, d = L + 2, cfg.embed_dim
    return {
        "layer_norms": layer_norm_cost(t, d, elem_bytes) * 2,
        "qkv_proj": linear_cost(t, d, 3 * d, elem_bytes),
        "attention": attention_cost(1, t, t, cfg.attention_heads, cfg.head_dim, elem_bytes)
        + Cost(6.0 * t * 2 * d, 0.0),  # rotary on q and k: 3 mul-adds per element, fused into the load
        "out_proj": linear_cost(t, d, d, elem_bytes) + _elementwise(t * d, 1, elem_bytes),
        "ffn": linear_cost(t, d, cfg.ffn_embed_dim, elem_bytes)
        + _elementwise(t * cfg.ffn_embed_dim, 8, elem_bytes, tensors=2)  # GELU (erf form)
        + linear_cost(t, cfg.ffn_embed_dim, d, elem_bytes)
        + _elementwise(t * d, 1, elem_bytes),
    }


def esm2_costs(L: int, cfg: ESM2Config, elem_bytes: int = 4, lm_head: bool = True) -> dict[str, Cost]:
    """The whole ESM-2 forward: ``num_layers`` layers, the final LayerNorm and (optionally) the LM head."""
    t, d = L + 2, cfg.embed_dim
    layer = total(esm2_layer_costs(L, cfg, elem_bytes))
    out = {"layers": layer * cfg.num_layers, "final_norm": layer_norm_cost(t, d, elem_bytes)}
    if lm_head:
        out["lm_head"] = (linear_cost(t, d, d, elem_bytes) + layer_norm_cost(t, d, elem_bytes)
                          + linear_cost(t, d, cfg.alphabet_size, elem_bytes))
    return out


# --------------------------------------------------------------------------------- trunk block
def triangle_multiplication_cost(L: int, c_z: int, c_h: int, eb: int) -> Cost:
    """AlphaFold2 Algorithm 11/12: LN, four gated projections, the L^3 c_h contraction, LN, output."""
    pairs = float(L) * L
    return (
        layer_norm_cost(pairs, c_z, eb)
        + linear_cost(pairs, c_z, 4 * c_h, eb)  # a_p, a_g, b_p, b_g
        + _elementwise(pairs * 2 * c_h, _GATE + 1, eb, tensors=0)  # gate and mask, fused in the projection
        + Cost(2.0 * L * pairs * c_h, eb * 3 * pairs * c_h)  # x = sum_k a b: reads a, b, writes x
        + layer_norm_cost(pairs, c_h, eb)
        + linear_cost(pairs, c_h, c_z, eb)
        + linear_cost(pairs, c_z, c_z, eb)  # output gate g
        + _elementwise(pairs * c_z, _GATE + 1, eb)  # gate, residual add
    )


def triangle_attention_cost(L: int, c_z: int, heads: int, head_dim: int, eb: int) -> Cost:
    """AlphaFold2 Algorithm 13/14: LN, q/k/v/gate projections, a triangle bias, row attention, output."""
    pairs = float(L) * L
    hc = heads * head_dim
    return (
        layer_norm_cost(pairs, c_z, eb)
        + linear_cost(pairs, c_z, 4 * hc, eb)  # q, k, v, g
        + linear_cost(pairs, c_z, heads, eb)  # triangle bias
        + attention_cost(L, L, L, heads, head_dim, eb, bias_values=heads * pairs)
        + _elementwise(pairs * hc, _GATE, eb)
        + linear_cost(pairs, hc, c_z, eb)
        + _elementwise(pairs * c_z, 1, eb)
    )


def trunk_block_costs(L: int, cfg: TrunkConfig, elem_bytes: int = 4) -> dict[str, Cost]:
    """One folding-trunk block (ESMFold's ``TriangularSelfAttentionBlock``)."""
    eb, c_s, c_z = elem_bytes, cfg.sequence_state_dim, cfg.pairwise_state_dim
    pairs = float(L) * L
    seq_heads = c_s // cfg.sequence_head_width
    pair_heads = c_z // cfg.pairwise_head_width
    inner = c_z // 2
    return {
        "seq_attention": (
            layer_norm_cost(pairs, c_z, eb) + linear_cost(pairs, c_z, seq_heads, eb)  # pair -> sequence bias
            + layer_norm_cost(L, c_s, eb) + linear_cost(L, c_s, 3 * c_s, eb) + linear_cost(L, c_s, c_s, eb)  # qkv, gate
            + attention_cost(1, L, L, seq_heads, cfg.sequence_head_width, eb, bias_values=seq_heads * pairs)
            + _elementwise(L * c_s, _GATE, eb) + linear_cost(L, c_s, c_s, eb) + _elementwise(L * c_s, 1, eb)
        ),
        "seq_mlp": (
            layer_norm_cost(L, c_s, eb) + linear_cost(L, c_s, 4 * c_s, eb) + _elementwise(L * 4 * c_s, 1, eb, 2)
            + linear_cost(L, 4 * c_s, c_s, eb) + _elementwise(L * c_s, 1, eb)
        ),
        "seq_to_pair": (
            layer_norm_cost(L, c_s, eb) + linear_cost(L, c_s, 2 * inner, eb)
            + Cost(2.0 * pairs * inner, 0.0)  # outer product and difference, formed on the fly
            + linear_cost(pairs, 2 * inner, c_z, eb) + _elementwise(pairs * c_z, 1, eb)
        ),
        "tri_mul_out": triangle_multiplication_cost(L, c_z, c_z, eb),
        "tri_mul_in": triangle_multiplication_cost(L, c_z, c_z, eb),
        "tri_att_start": triangle_attention_cost(L, c_z, pair_heads, cfg.pairwise_head_width, eb),
        "tri_att_end": triangle_attention_cost(L, c_z, pair_heads, cfg.pairwise_head_width, eb),
        "pair_transition": (
            layer_norm_cost(pairs, c_z, eb) + linear_cost(pairs, c_z, 4 * c_z, eb)
            + _elementwise(pairs * 4 * c_z, 1, eb, 2) + linear_cost(pairs, 4 * c_z, c_z, eb)
            + _elementwise(pairs * c_z, 1, eb)
        ),
    }


# --------------------------------------------------------------------------- structure module
def structure_module_costs(L: int, cfg: StructureModuleConfig, elem_bytes: int = 4) -> dict[str, Cost]:
    """AlphaFold2 Algorithm 20 (``num_blocks`` iterations of shared-weight IPA, transition, backbone
    update and the angle ResNet) plus its input projections."""
    eb, c_s, c_z = elem_bytes, cfg.sequence_dim, cfg.pairwise_dim
    h, c, pq, pv = cfg.num_heads_ipa, cfg.ipa_dim, cfg.num_qk_points, cfg.num_v_points
    pairs = float(L) * L
    ipa = (
        linear_cost(L, c_s, 3 * h * c, eb)  # q, k, v
        + linear_cost(L, c_s, h * (2 * pq + pv) * 3, eb)  # q, k, v points
        + linear_cost(pairs, c_z, h, eb)  # pair bias b_ij
        + Cost(pairs * h * (2.0 * c + 9.0 * pq + _SOFTMAX), 0.0)  # q.k, point distances, softmax
        + Cost(pairs * h * 2.0 * (c + 3 * pv + c_z), eb * pairs * c_z)  # a.v, a.points, a.z (reads z)
        + linear_cost(L, h * (c_z + c + 4 * pv), c_s, eb)
        + layer_norm_cost(L, c_s, eb)
    )
    r = cfg.resnet_dim
    per_iteration = (
        ipa
        + linear_cost(L, c_s, c_s, eb) * (3 * cfg.num_transition_layers) + layer_norm_cost(L, c_s, eb)
        + linear_cost(L, c_s, 6, eb)  # backbone update
        + linear_cost(L, c_s, r, eb) * 2 + linear_cost(L, r, r, eb) * (2 * cfg.num_resnet_blocks)
        + linear_cost(L, r, 2 * cfg.num_angles, eb)
        + Cost(L * 14 * 3 * 40.0, 0.0)  # frames, torsions -> atom14 (a few 4x4 compositions per atom)
    )
    return {
        "inputs": layer_norm_cost(L, c_s, eb) + layer_norm_cost(pairs, c_z, eb) + linear_cost(L, c_s, c_s, eb),
        "ipa_iterations": per_iteration * cfg.num_blocks,
    }


# ----------------------------------------------------------------------------------- ESMFold
def _pass_extras(L: int, cfg: ESMFoldConfig, eb: int) -> Cost:
    """Per trunk pass outside the blocks: recycling norms and distogram embedding, positional
    embedding, the trunk -> structure-module projections and the recycled CB distogram."""
    t = cfg.trunk
    pairs = float(L) * L
    c_s, c_z = t.sequence_state_dim, t.pairwise_state_dim
    return (
        layer_norm_cost(L, c_s, eb) + layer_norm_cost(pairs, c_z, eb)
        + _elementwise(pairs * c_z, 2, eb) * 2  # recycle embedding and positional embedding adds
        + linear_cost(L, c_s, t.structure_module.sequence_dim, eb)
        + linear_cost(pairs, c_z, t.structure_module.pairwise_dim, eb)
        + Cost(pairs * (8.0 + 15), eb * pairs)  # squared CB distances and binning
    )


def _heads(L: int, cfg: ESMFoldConfig, eb: int) -> Cost:
    """Distogram and pTM heads on the pair state, pLDDT and LM heads on the sequence state."""
    pairs = float(L) * L
    t = cfg.trunk
    c_z, c_s = t.pairwise_state_dim, t.sequence_state_dim
    sm = t.structure_module
    h = cfg.lddt_head_hid_dim
    return (
        linear_cost(pairs, c_z, 64, eb) * 2  # distogram + pTM bins
        + linear_cost(L * sm.num_blocks, sm.sequence_dim, h, eb) + linear_cost(L * sm.num_blocks, h, h, eb)
        + linear_cost(L * sm.num_blocks, h, 37 * 50, eb)
        + linear_cost(L, c_s, cfg.esm.alphabet_size - 10, eb)
        + Cost(pairs * 64 * 10.0, eb * pairs * 64)  # pTM / PAE expectations over bins
    )


def _lm_combine(L: int, cfg: ESMFoldConfig, eb: int) -> Cost:
    """Softmax-weighted mix of all LM layers and the esm_s_mlp into c_s."""
    d, c_s = cfg.esm.embed_dim, cfg.trunk.sequence_state_dim
    return (
        Cost(2.0 * L * d * (cfg.esm.num_layers + 1), eb * L * d * (cfg.esm.num_layers + 1))
        + layer_norm_cost(L, d, eb) + linear_cost(L, d, c_s, eb) + linear_cost(L, c_s, c_s, eb)
    )


def esmfold_costs(L: int, cfg: ESMFoldConfig, num_passes: int | None = None,
                  elem_bytes: int = 4) -> dict[str, Cost]:
    """One ``infer`` of one sequence of length L; ``num_passes`` trunk passes (default
    ``max_recycles``, the reference's meaning of ``num_recycles=None``). The structure module runs
    once per pass (its positions feed the recycled distogram)."""
    passes = cfg.trunk.max_recycles if num_passes is None else num_passes
    if passes < 1:
        raise ValueError(f"num_passes must be >= 1, got {passes}")
    block = total(trunk_block_costs(L, cfg.trunk, elem_bytes))
    sm = total(structure_module_costs(L, cfg.trunk.structure_module, elem_bytes))
    return {
        "esm2": total(esm2_costs(L, cfg.esm, elem_bytes, lm_head=False)) + _lm_combine(L, cfg, elem_bytes),
        "trunk": block * (cfg.trunk.num_blocks * passes),
        "recycling": _pass_extras(L, cfg, elem_bytes) * passes,
        "structure_module": sm * passes,
        "heads": _heads(L, cfg, elem_bytes),
    }


def esmfold_flops(L: int, cfg: ESMFoldConfig, num_passes: int | None = None) -> float:
    return total(esmfold_costs(L, cfg, num_passes)).flops


def trunk_block_polynomial(cfg: TrunkConfig) -> tuple[float, float, float]:
    """Exact (a, b, c) with FLOPs(block, L) = a L^3 + b L^2 + c L, recovered from three lengths."""
    import numpy as np

    lengths = np.array([64.0, 256.0, 1024.0])
    f = np.array([total(trunk_block_costs(int(n), cfg)).flops for n in lengths])
    a, b, c = np.linalg.solve(np.stack([lengths ** 3, lengths ** 2, lengths], axis=1), f)
    return float(a), float(b), float(c)
