"""The AlphaFold2 structure module (Algorithm 20) as ESMFold uses it.

Parameter names are those of transformers' ``EsmFoldStructureModule`` (checkpoint prefix
``trunk.structure_module.``), so its state dict loads with strict key matching. The residue
geometry tables are non-persistent buffers, as in the peer, and never appear in a state dict.

Precision policy: linear layers run in the dtype of the inputs; the rigid frames, point
coordinates and attention logits run in at least float32 ("frame dtype"), as the peer forces its
rotations to float32. In float64 everything is float64 (that is how parity is verified).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import residue_constants as rc
from .config import StructureModuleConfig
from .memory import STRUCTURE_CHUNK_ELEMENTS, rows_per_chunk, spans
from .rigid import (
    Rigid,
    compose_q_update_vec,
    frames_and_literature_positions_to_atom14_pos,
    identity_backbone,
    quat_to_rot,
    torsion_angles_to_frames,
)


def _frame_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class InvariantPointAttention(nn.Module):
    """Invariant point attention, AlphaFold2 Algorithm 22.

    The pair-derived logit bias depends only on ``z`` and the mask, which are the same for all
    blocks (weights are shared), so :meth:`pair_bias` is computed once per forward and passed in.
    The squared point distances are expanded as ``|q|^2 + |k|^2 - 2 q.k``: the ``|q|^2`` term is
    constant along the softmax axis and dropped, the cross term joins the scalar ``q.k`` in one
    matmul, which avoids the ``[*, L, L, H, P, 3]`` tensor of the direct form. Points are taken
    relative to the masked centroid of the frame origins (attention is translation invariant) so the
    expansion does not cancel large coordinates.
    """

    def __init__(self, cfg: StructureModuleConfig):
        super().__init__()
        self.cfg = cfg
        c_s, c_z, c, h = cfg.sequence_dim, cfg.pairwise_dim, cfg.ipa_dim, cfg.num_heads_ipa
        self.hidden_dim, self.num_heads = c, h
        self.num_qk_points, self.num_v_points = cfg.num_qk_points, cfg.num_v_points
        # With bias and LeCun init as in the released code (the supplement says no bias, Glorot).
        self.linear_q = nn.Linear(c_s, h * c)
        self.linear_kv = nn.Linear(c_s, 2 * h * c)
        self.linear_q_points = nn.Linear(c_s, h * cfg.num_qk_points * 3)
        self.linear_kv_points = nn.Linear(c_s, h * (cfg.num_qk_points + cfg.num_v_points) * 3)
        self.linear_b = nn.Linear(c_z, h)
        self.head_weights = nn.Parameter(torch.zeros(h))
        self.linear_out = nn.Linear(h * (c_z + c + cfg.num_v_points * 4), c_s)

    def pair_bias(self, z: Tensor, mask: Tensor) -> Tensor:
        """Logit bias ``sqrt(1/3) * b_ij`` plus the padding mask; ``z`` layer-normed. -> ``[B, H, L, L]``."""
        fd = _frame_dtype(z.dtype)
        b = self.linear_b(z).to(fd).permute(0, 3, 1, 2)  # [B, H, L, L]
        mask = mask.to(fd)
        square_mask = mask[:, :, None] * mask[:, None, :]  # [B, L, L]
        return math.sqrt(1.0 / 3.0) * b + (self.cfg.inf * (square_mask - 1)).unsqueeze(1)

    def _points(self, linear: nn.Linear, s: Tensor, frames: Rigid, n_points: int) -> Tensor:
        """Project ``s`` to ``H * n_points`` local points and map them to global. -> ``[B, L, H, n_points, 3]``."""
        p = linear(s).to(frames.trans.dtype)  # [B, L, 3 * H * P]: all x, then all y, then all z
        p = torch.stack(p.chunk(3, dim=-1), dim=-1)  # [B, L, H * P, 3]
        p = frames.unsqueeze(-1).apply(p)
        return p.view(*p.shape[:-2], self.num_heads, n_points, 3)

    def forward(self, s: Tensor, z: Tensor, pair_bias: Tensor, frames: Rigid, mask: Tensor) -> Tensor:
        """
        Args:
            s: ``[B, L, c_s]`` single representation.
            z: ``[B, L, L, c_z]`` layer-normed pair representation.
            pair_bias: ``[B, H, L, L]`` from :meth:`pair_bias`.
            frames: ``[B, L]`` backbone frames (frame dtype, translations in nm-scale units).
            mask: ``[B, L]`` residue mask.
        Returns:
            ``[B, L, c_s]`` update of ``s``.
        """
        B, L, _ = s.shape
        H, C, Pq, Pv = self.num_heads, self.hidden_dim, self.num_qk_points, self.num_v_points
        fd = frames.trans.dtype

        # Shift frame origins by their masked centroid; logits and local outputs are unchanged.
        w = mask.to(fd).unsqueeze(-1)  # [B, L, 1]
        centroid = (frames.trans * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1)
        frames = Rigid(frames.rot, frames.trans - centroid)

        q = self.linear_q(s).view(B, L, H, C)
        k, v = self.linear_kv(s).view(B, L, H, 2 * C).split(C, dim=-1)  # [B, L, H, C] each
        q_pts = self._points(self.linear_q_points, s, frames, Pq)  # [B, L, H, Pq, 3]
        kv_pts = self._points(self.linear_kv_points, s, frames, Pq + Pv)
        k_pts, v_pts = kv_pts.split([Pq, Pv], dim=-2)

        # gamma_h * w_C / 2 of Algorithm 22, line 7, with w_C = sqrt(2 / (9 Pq)).
        head_w = nn.functional.softplus(self.head_weights).to(fd) * math.sqrt(1.0 / (3 * (Pq * 9.0 / 2)))
        # logits = w_L (q.k / sqrt(C) + b) - gamma w_C / 2 |qp - kp|^2, w_L = sqrt(1/3), |qp|^2 dropped.
        q_cat = torch.cat(
            [q.to(fd) * math.sqrt(1.0 / (3 * C)), (q_pts * head_w[:, None, None]).flatten(-2)], dim=-1
        ).transpose(1, 2)  # [B, H, L, C + 3 Pq]
        k_cat = torch.cat([k.to(fd), k_pts.flatten(-2)], dim=-1).transpose(1, 2)  # [B, H, L, C + 3 Pq]
        key_term = -0.5 * head_w[:, None] * k_pts.pow(2).sum((-1, -2)).transpose(1, 2)  # [B, H, L]
        logits = torch.baddbmm(
            pair_bias.reshape(B * H, L, L), q_cat.reshape(B * H, L, -1), k_cat.reshape(B * H, L, -1).transpose(1, 2)
        ).view(B, H, L, L)
        logits += key_term.unsqueeze(-2)
        a = torch.softmax(logits, dim=-1)  # [B, H, L, L]
        del logits

        # Scalar values and pair features in the compute dtype; points in the frame dtype.
        a_c = a.to(s.dtype)
        o = torch.matmul(a_c, v.transpose(1, 2)).transpose(1, 2).reshape(B, L, H * C)
        o_pair = torch.matmul(a_c.transpose(1, 2), z.to(s.dtype)).reshape(B, L, -1)  # [B, L, H * c_z]
        o_pt = torch.matmul(a, v_pts.flatten(-2).transpose(1, 2))  # [B, H, L, Pv * 3]
        o_pt = o_pt.transpose(1, 2).reshape(B, L, H, Pv, 3)
        o_pt = frames.unsqueeze(-1).unsqueeze(-1).invert_apply(o_pt)  # back to each residue's local frame
        o_pt_norm = torch.sqrt(o_pt.pow(2).sum(-1) + self.cfg.epsilon).reshape(B, L, H * Pv)
        o_pt = o_pt.reshape(B, L, H * Pv, 3)

        feats = torch.cat([o, *(x.to(s.dtype) for x in o_pt.unbind(-1)), o_pt_norm.to(s.dtype), o_pair], dim=-1)
        return self.linear_out(feats.to(z.dtype))


class BackboneUpdate(nn.Module):
    """Algorithm 23, line 1: the 6-vector (quaternion vector part, translation) of the update."""

    def __init__(self, cfg: StructureModuleConfig):
        super().__init__()
        self.linear = nn.Linear(cfg.sequence_dim, 6)

    def forward(self, s: Tensor) -> Tensor:
        return self.linear(s)  # [B, L, 6]


class StructureModuleTransitionLayer(nn.Module):
    """Algorithm 20, lines 8-9: a residual three-layer ReLU MLP."""

    def __init__(self, cfg: StructureModuleConfig):
        super().__init__()
        c = cfg.sequence_dim
        self.linear_1 = nn.Linear(c, c)
        self.linear_2 = nn.Linear(c, c)
        self.linear_3 = nn.Linear(c, c)

    def forward(self, s: Tensor) -> Tensor:
        return s + self.linear_3(torch.relu(self.linear_2(torch.relu(self.linear_1(s)))))


class StructureModuleTransition(nn.Module):
    """Algorithm 20, lines 8-9: transition layers, dropout, LayerNorm."""

    def __init__(self, cfg: StructureModuleConfig):
        super().__init__()
        self.layers = nn.ModuleList(StructureModuleTransitionLayer(cfg) for _ in range(cfg.num_transition_layers))
        self.dropout = nn.Dropout(cfg.dropout_rate)
        self.layer_norm = nn.LayerNorm(cfg.sequence_dim)

    def forward(self, s: Tensor) -> Tensor:
        for layer in self.layers:
            s = layer(s)
        return self.layer_norm(self.dropout(s))


class AngleResnetBlock(nn.Module):
    def __init__(self, cfg: StructureModuleConfig):
        super().__init__()
        self.linear_1 = nn.Linear(cfg.resnet_dim, cfg.resnet_dim)
        self.linear_2 = nn.Linear(cfg.resnet_dim, cfg.resnet_dim)

    def forward(self, a: Tensor) -> Tensor:
        return a + self.linear_2(torch.relu(self.linear_1(torch.relu(a))))


class AngleResnet(nn.Module):
    """Algorithm 20, lines 11-14: torsion angles (sin, cos) from the current and initial single state.

    The ReLUs on the inputs are in the released AlphaFold2 code though not in the supplement.
    """

    def __init__(self, cfg: StructureModuleConfig):
        super().__init__()
        self.epsilon = cfg.epsilon
        self.linear_in = nn.Linear(cfg.sequence_dim, cfg.resnet_dim)
        self.linear_initial = nn.Linear(cfg.sequence_dim, cfg.resnet_dim)
        self.layers = nn.ModuleList(AngleResnetBlock(cfg) for _ in range(cfg.num_resnet_blocks))
        self.linear_out = nn.Linear(cfg.resnet_dim, cfg.num_angles * 2)

    def forward(self, s: Tensor, s_initial: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, L, c_s]`` x 2 -> unnormalised and unit-normalised angles, ``[B, L, num_angles, 2]`` each."""
        a = self.linear_in(torch.relu(s)) + self.linear_initial(torch.relu(s_initial))
        for layer in self.layers:
            a = layer(a)
        a = self.linear_out(torch.relu(a))
        unnormalized = a.view(*a.shape[:-1], -1, 2)
        norm = torch.sqrt(torch.clamp(unnormalized.pow(2).sum(-1, keepdim=True), min=self.epsilon))
        return unnormalized, unnormalized / norm


class StructureModule(nn.Module):
    """AlphaFold2 Algorithm 20 (structure module) with shared weights across ``num_blocks`` blocks."""

    def __init__(self, cfg: StructureModuleConfig):
        super().__init__()
        self.config = cfg
        self.layer_norm_s = nn.LayerNorm(cfg.sequence_dim)
        self.layer_norm_z = nn.LayerNorm(cfg.pairwise_dim)
        self.linear_in = nn.Linear(cfg.sequence_dim, cfg.sequence_dim)
        self.ipa = InvariantPointAttention(cfg)
        self.ipa_dropout = nn.Dropout(cfg.dropout_rate)
        self.layer_norm_ipa = nn.LayerNorm(cfg.sequence_dim)
        self.transition = StructureModuleTransition(cfg)
        self.bb_update = BackboneUpdate(cfg)
        self.angle_resnet = AngleResnet(cfg)
        # Residue geometry, float32 like the tables; non-persistent like the peer's lazily made buffers.
        self.register_buffer("default_frames", self._table(rc.restype_rigid_group_default_frame), persistent=False)
        self.register_buffer("group_idx", torch.tensor(rc.restype_atom14_to_rigid_group), persistent=False)
        self.register_buffer("atom_mask", self._table(rc.restype_atom14_mask), persistent=False)
        self.register_buffer("lit_positions", self._table(rc.restype_atom14_rigid_group_positions), persistent=False)

    @staticmethod
    def _table(array, device=None) -> Tensor:
        return torch.tensor(array, dtype=torch.float32, device=device)

    _FLOAT_TABLES = (
        ("default_frames", rc.restype_rigid_group_default_frame),
        ("atom_mask", rc.restype_atom14_mask),
        ("lit_positions", rc.restype_atom14_rigid_group_positions),
    )

    def reset_buffers(self) -> None:
        """Refill the geometry tables (after ``to_empty`` gave them uninitialised storage)."""
        with torch.no_grad():
            for name, array in self._FLOAT_TABLES:
                getattr(self, name).copy_(self._table(array))
            self.group_idx.copy_(torch.tensor(rc.restype_atom14_to_rigid_group))

    def _apply(self, fn, recurse=True):
        # ``.half()`` / ``.to(bfloat16)`` would round the literature geometry; keep it at float32 or better.
        super()._apply(fn, recurse)
        for name, array in self._FLOAT_TABLES:
            buf = getattr(self, name)
            if _frame_dtype(buf.dtype) != buf.dtype:
                setattr(self, name, self._table(array, buf.device))
        return self

    def _normalized_pair(self, pair: Tensor, in_place: bool) -> Tensor:
        """``layer_norm_z(pair)``; with ``in_place`` written back into ``pair`` row chunk by row chunk, so the
        normalised copy costs no second pair-sized tensor."""
        if not in_place or torch.is_grad_enabled():
            return self.layer_norm_z(pair)
        n = pair.shape[1]
        for r in spans(n, rows_per_chunk(n, n * pair.shape[-1], budget=STRUCTURE_CHUNK_ELEMENTS)):
            pair[:, r] = self.layer_norm_z(pair[:, r])
        return pair

    def forward(
        self,
        evoformer_output_dict: dict[str, Tensor],
        aatype: Tensor,
        mask: Tensor | None = None,
        pair_is_scratch: bool = False,
    ) -> dict[str, Tensor]:
        """
        Args:
            evoformer_output_dict: ``{"single": [B, L, c_s], "pair": [B, L, L, c_z]}``.
            aatype: ``[B, L]`` residue types 0-20.
            mask: ``[B, L]`` residue mask (1 = residue, 0 = padding); all ones if ``None``.
            pair_is_scratch: the caller no longer needs ``pair``: without autograd it is layer-normed in place.
        Returns:
            Per block, stacked on a leading ``num_blocks`` axis: ``frames [n, B, L, 7]`` (unit
            quaternion, translation in Angstrom), ``sidechain_frames [n, B, L, 8, 4, 4]``,
            ``unnormalized_angles`` and ``angles [n, B, L, 7, 2]``, ``positions [n, B, L, 14, 3]``,
            ``states [n, B, L, c_s]``; and ``single [B, L, c_s]``, the final state. Geometric outputs
            are in the frame dtype (float32 for half-precision inputs), the others in the input dtype.
        """
        cfg = self.config
        s = evoformer_output_dict["single"]
        if mask is None:
            mask = s.new_ones(s.shape[:-1])
        fd = _frame_dtype(s.dtype)
        default_frames = self.default_frames.to(fd)
        atom_mask, lit_positions = self.atom_mask.to(fd), self.lit_positions.to(fd)

        s = self.layer_norm_s(s)  # [B, L, c_s]
        z = self._normalized_pair(evoformer_output_dict["pair"], pair_is_scratch)  # [B, L, L, c_z]
        pair_bias = self.ipa.pair_bias(z, mask)  # [B, H, L, L], shared by all blocks
        s_initial = s
        s = self.linear_in(s)

        quats, trans = identity_backbone(s.shape[:-1], fd, s.device)  # [B, L, 4], [B, L, 3]
        rot = quat_to_rot(quats)  # [B, L, 3, 3]
        outputs: dict[str, list[Tensor]] = {
            k: [] for k in ("frames", "sidechain_frames", "unnormalized_angles", "angles", "positions", "states")
        }
        for _ in range(cfg.num_blocks):
            s = s + self.ipa(s, z, pair_bias, Rigid(rot, trans), mask)
            s = self.layer_norm_ipa(self.ipa_dropout(s))
            s = self.transition(s)

            quats, trans = compose_q_update_vec(quats, rot, trans, self.bb_update(s).to(fd))
            rot = quat_to_rot(quats)
            backbone = Rigid(rot, trans * cfg.trans_scale_factor)  # nm-scale units -> Angstrom

            unnormalized_angles, angles = self.angle_resnet(s, s_initial)
            all_frames = torsion_angles_to_frames(backbone, angles.to(fd), aatype, default_frames)
            positions = frames_and_literature_positions_to_atom14_pos(
                all_frames, aatype, self.group_idx, atom_mask, lit_positions
            )

            outputs["frames"].append(torch.cat([quats, backbone.trans], dim=-1))
            outputs["sidechain_frames"].append(all_frames.to_tensor_4x4())
            outputs["unnormalized_angles"].append(unnormalized_angles)
            outputs["angles"].append(angles)
            outputs["positions"].append(positions)
            outputs["states"].append(s)
            # As in AlphaFold2: no gradient flows through the rotation into the next block.
            quats, rot = quats.detach(), rot.detach()

        result = {k: torch.stack(v) for k, v in outputs.items()}
        result["single"] = s
        return result
