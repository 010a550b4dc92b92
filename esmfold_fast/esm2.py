"""ESM-2: the protein language model ESMFold reads its sequence with.

A BERT-style encoder of pre-LayerNorm transformer layers with rotary position embeddings
(rotate-halves / NeoX form), token dropout on ``<mask>`` embeddings, a final
``emb_layer_norm_after``, a RoBERTa LM head tied to the token embedding and a contact head (a
logistic regression over every layer's and head's symmetrised, APC-corrected attention map).
Semantics and state-dict keys are fair-esm's ``esm.model.esm2.ESM2``, so a fair-esm state dict
loads unchanged; :mod:`esmfold_fast.checkpoints` maps transformers' ``EsmModel`` / ``EsmForMaskedLM``
keys onto it.

The hot paths run through the backend (``self.ops``), with autograd on every backend: every LayerNorm,
fused with the residual add that precedes it, and the rotary attention core. Attention weights, which the
fused core does not return, are computed explicitly in plain PyTorch when asked for.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from fastfold_kernels.rotary_attention import rotary_attention_reference

from . import backend as _backend
from .alphabet import Alphabet, as_alphabet
from .backend import BackendModule, backend_for_move, conversion_target
from .config import ESM2Config

# ESM-2 was trained masking 15% of tokens, 80% of those with <mask> (fair-esm ``mask_ratio_train``).
MASK_RATIO_TRAIN = 0.15 * 0.8


def default_inv_freq(head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Rotary inverse frequencies ``theta^(-2i/D)``, fp32 [D/2] (RoFormer / GPT-NeoX), on the default device.

    Computed on the CPU: on the meta device (models built for loading) ``arange`` would run through torch's
    Python decompositions, whose import alone costs about 70 MB of resident memory."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device="cpu") / head_dim
    return (1.0 / (theta**exponents)).to(torch.get_default_device())


class RotaryEmbedding(nn.Module):
    """Holds the rotary ``inv_freq`` buffer (key ``rot_emb.inv_freq``) and makes the cos/sin tables.

    The buffer stays fp32 whatever dtype the model is cast to: official checkpoints store values
    rounded in fp16 during training and positions beyond ~2k would be wrong if rounded again to
    bf16. Loaded values are kept, never recomputed.

    ``fair_esm_half`` (default False): when the activations are fp16 or bf16, compute the tables as
    fair-esm does after ``model.half()`` (``.bfloat16()``): ``inv_freq`` rounded to that dtype, the
    positions ``arange(T).type_as(inv_freq)`` (rounded above 2048 in fp16, 256 in bf16), their outer product and
    cos/sin all in that dtype. The tables are bit-identical to fair-esm's and are returned as fp32
    (the conversion is exact). They are coarse (|cos| off by up to 0.12 at T=512 and 0.5 at T=2048
    against fp32 tables), but ESMFold's trunk was trained behind fair-esm's fp16 LM, which saw them,
    so :class:`~esmfold_fast.esmfold.ESMFold` turns this on for its LM. fp32 and fp64 activations,
    and every standalone ESM-2 by default, get fp32 tables (fair-esm's fp32 ESM-2 computes fp32
    tables; transformers computes fp32 tables at every dtype).
    """

    def __init__(self, head_dim: int, theta: float = 10000.0, fair_esm_half: bool = False) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self.fair_esm_half = fair_esm_half
        self.register_buffer("inv_freq", default_inv_freq(head_dim, theta))

    def reset_buffers(self) -> None:
        with torch.no_grad():
            self.inv_freq.copy_(default_inv_freq(self.head_dim, self.theta))

    def _apply(self, fn, recurse=True):
        before = self.inv_freq
        super()._apply(fn, recurse)
        if self.inv_freq.dtype != torch.float32:
            # Keep the exact fp32 values across .half()/.to(bfloat16).
            src = before if not before.is_meta and not self.inv_freq.is_meta else self.inv_freq
            self.inv_freq = src.to(device=self.inv_freq.device, dtype=torch.float32)
        return self

    def table_dtype(self, activation_dtype: torch.dtype) -> torch.dtype:
        """The dtype the tables are computed in for activations of ``activation_dtype``."""
        if self.fair_esm_half and activation_dtype in (torch.float16, torch.bfloat16):
            return activation_dtype
        return torch.float32

    def _table_key(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple:
        # inv_freq's version counter and address change when it is loaded or moved; inference-mode
        # tables cannot be used by autograd, so the two modes keep separate tables.
        inv = self.inv_freq
        return (seq_len, torch.device(device), dtype, inv.data_ptr(), inv._version, torch.is_inference_mode_enabled())

    def cos_sin(
        self, seq_len: int, device: torch.device, activation_dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin: [T, D] fp32 for positions 0..T-1 (both halves share each frequency), computed in
        :meth:`table_dtype` of ``activation_dtype`` (fp32 unless ``fair_esm_half``).

        The tables of the last length asked for are kept: every forward at that length reuses them
        (five small ops per layer saved, which on CPU cost more in thread synchronisation than in work).
        """
        dtype = self.table_dtype(activation_dtype)
        key = self._table_key(seq_len, device, dtype)
        cached = getattr(self, "_tables", None)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        inv_freq = self.inv_freq.to(device=device, dtype=dtype)
        # fair-esm: ``arange(T).type_as(inv_freq)``, ``einsum("i,j->ij")`` (one product rounded once, as
        # ``outer``), cos/sin, all in inv_freq's dtype.
        t = torch.arange(seq_len, device=device).to(dtype)
        freqs = torch.outer(t, inv_freq)  # [T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [T, D]
        cos, sin = emb.cos().float(), emb.sin().float()
        self._tables = (key, cos, sin)
        return cos, sin


class ESM2SelfAttention(BackendModule):
    """Multi-head self-attention with rotary embeddings (fair-esm ``MultiheadAttention`` keys).

    At inference the q/k/v weights are views into one [3C, C] tensor so a single matmul makes all
    three projections without keeping a second copy of the weights.
    """

    def __init__(self, embed_dim: int, num_heads: int, rope_theta: float = 10000.0) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.rot_emb = RotaryEmbedding(self.head_dim, rope_theta)
        self._qkv_weight: torch.Tensor | None = None  # [3C, C], plain attribute: not in the state dict
        self._qkv_bias: torch.Tensor | None = None  # [3C]

    def _apply(self, fn, recurse=True):
        # Conversions give each parameter new storage; drop the stale fused tensor first.
        self._qkv_weight = self._qkv_bias = None
        return super()._apply(fn, recurse)

    def _projections(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        p = (self.q_proj, self.k_proj, self.v_proj)
        return [m.weight for m in p], [m.bias for m in p]

    def _is_fused(self) -> bool:
        W, b = self._qkv_weight, self._qkv_bias
        if W is None or b is None:
            return False
        weights, biases = self._projections()
        C = self.embed_dim
        for i, (w, bb) in enumerate(zip(weights, biases)):
            if w.dtype != W.dtype or w.device != W.device or bb.dtype != b.dtype or bb.device != b.device:
                return False
            if w.data_ptr() != W[i * C].data_ptr() or bb.data_ptr() != b[i * C :].data_ptr():
                return False
        return True

    def _fuse(self) -> None:
        weights, biases = self._projections()
        C = self.embed_dim
        # Outside inference mode so the parameters never become inference tensors.
        with torch.inference_mode(False), torch.no_grad():
            W = torch.cat([w.detach() for w in weights])  # [3C, C]
            b = torch.cat([x.detach() for x in biases])  # [3C]
            for i, (w, bb) in enumerate(zip(weights, biases)):
                w.data = W[i * C : (i + 1) * C]
                bb.data = b[i * C : (i + 1) * C]
        self._qkv_weight, self._qkv_bias = W, b

    def qkv_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The stacked [3C, C] weight and [3C] bias of the q, k, v projections."""
        weights, biases = self._projections()
        if torch.is_grad_enabled() and any(w.requires_grad for w in weights + biases):
            return torch.cat(weights), torch.cat(biases)  # differentiable: gradients reach each Linear
        if not self._is_fused():
            self._fuse()
        return self._qkv_weight, self._qkv_bias

    def forward(
        self, h: torch.Tensor, key_padding_mask: torch.Tensor | None = None, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """h: [B, T, C] (already normalised) -> out_proj(attention) [B, T, C], weights [B, H, T, T]."""
        out, weights = self.attend(h, key_padding_mask, need_weights)
        return self.out_proj(out), weights

    def attend(
        self, h: torch.Tensor, key_padding_mask: torch.Tensor | None = None, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The attention before ``out_proj``: h [B, T, C] -> heads merged [B, T, C], weights or None."""
        B, T, C = h.shape
        W, b = self.qkv_weight()
        qkv = F.linear(h, W, b).view(B, T, 3, self.num_heads, self.head_dim)  # [B, T, 3, H, D]
        q, k, v = qkv.unbind(2)  # each [B, T, H, D], strided views of qkv
        cos, sin = self.rot_emb.cos_sin(T, h.device, h.dtype)  # [T, D] fp32
        # The fused cores do not return their probabilities; asked for, they come from the plain PyTorch path.
        if need_weights:
            out, weights = rotary_attention_reference(
                q, k, v, cos, sin, key_padding_mask, self.scaling, return_weights=True
            )
            weights = weights if need_weights else None
        else:
            out = self.ops.rotary_attention(q, k, v, cos, sin, key_padding_mask, self.scaling)
            weights = None
        return out.reshape(B, T, C), weights


class ESM2Layer(nn.Module):
    """One pre-LayerNorm transformer layer (fair-esm ``TransformerLayer`` keys).

    ``ESM2.forward`` drives the parts so each residual add is fused into the next LayerNorm:
    x <- x + attn(LN1(x)); x <- x + fc2(gelu(fc1(LN2(x)))).
    """

    def __init__(self, embed_dim: int, num_heads: int, eps: float = 1e-5, rope_theta: float = 10000.0) -> None:
        super().__init__()
        self.self_attn = ESM2SelfAttention(embed_dim, num_heads, rope_theta)
        self.self_attn_layer_norm = nn.LayerNorm(embed_dim, eps=eps)
        self.fc1 = nn.Linear(embed_dim, 4 * embed_dim)
        self.fc2 = nn.Linear(4 * embed_dim, embed_dim)
        self.final_layer_norm = nn.LayerNorm(embed_dim, eps=eps)

    def feed_forward(self, h: torch.Tensor) -> torch.Tensor:
        """[B, T, C] -> [B, T, C]; exact (erf) GELU as ESM-2 was trained with."""
        return self.fc2(F.gelu(self.fc1(h)))


class ESM2LMHead(BackendModule):
    """RoBERTa masked-LM head; ``weight`` is the token embedding (tied)."""

    def __init__(self, embed_dim: int, weight: nn.Parameter, eps: float = 1e-5) -> None:
        super().__init__()
        self.dense = nn.Linear(embed_dim, embed_dim)
        self.layer_norm = nn.LayerNorm(embed_dim, eps=eps)
        self.weight = weight
        self.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, C] -> logits [B, T, V]."""
        x = F.gelu(self.dense(x))
        x = self.ops.layer_norm(x, self.layer_norm.weight, self.layer_norm.bias, self.layer_norm.eps)
        return F.linear(x, self.weight, self.bias)


def _add_linear_(x: torch.Tensor, inp: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """x += linear(inp) in place: x [B, T, C_out] contiguous, inp [B, T, C_in]."""
    x2 = x.view(-1, x.shape[-1])  # [B*T, C_out]
    x2.addmm_(inp.reshape(-1, inp.shape[-1]), linear.weight.t())
    return x2.add_(linear.bias)


def symmetrize(x: torch.Tensor) -> torch.Tensor:
    """x + x^T over the last two dims."""
    return x + x.transpose(-1, -2)


def average_product_correct(x: torch.Tensor) -> torch.Tensor:
    """APC: subtract row-sum x column-sum / total from each map (Dunn et al. 2008)."""
    a1 = x.sum(-1, keepdim=True)  # [..., S, 1]
    a2 = x.sum(-2, keepdim=True)  # [..., 1, S]
    a12 = x.sum((-1, -2), keepdim=True)  # [..., 1, 1]
    return x - a1 * a2 / a12


class ESM2ContactHead(nn.Module):
    """Contacts from attention maps: drop eos and cls, symmetrise, APC, logistic regression."""

    def __init__(self, in_features: int, eos_idx: int) -> None:
        super().__init__()
        self.eos_idx = eos_idx
        self.regression = nn.Linear(in_features, 1)

    def forward(self, tokens: torch.Tensor, attentions: torch.Tensor) -> torch.Tensor:
        """tokens [B, T], attentions [B, L, H, T, T] -> contact probabilities [B, T-2, T-2]."""
        keep = tokens.ne(self.eos_idx).to(attentions.dtype)  # [B, T]
        # fair-esm zeroes every eos row/column, then drops the last and the first (cls) position.
        pair = keep[:, :, None] * keep[:, None, :]  # [B, T, T]
        att = attentions * pair[:, None, None]
        att = att[..., 1:-1, 1:-1]  # [B, L, H, S, S]
        B, L, H, S, _ = att.shape
        att = att.reshape(B, L * H, S, S).to(self.regression.weight)  # [B, LH, S, S]
        feats = average_product_correct(symmetrize(att))  # [B, LH, S, S]
        w = self.regression.weight[0]  # [LH]
        logits = torch.einsum("bcij,c->bij", feats, w) + self.regression.bias  # [B, S, S]
        return torch.sigmoid(logits)


class ESM2(BackendModule):
    """ESM-2 protein language model (fair-esm semantics and state-dict keys).

    Build from an :class:`ESM2Config` or with fair-esm's keywords::

        ESM2(ESM2Config.named("esm2_t6_8M_UR50D"))
        ESM2(num_layers=33, embed_dim=1280, attention_heads=20, alphabet="ESM-1b", token_dropout=True)

    ``lm_head=False`` leaves the masked-LM head out (ESMFold's LM has none); ``contact_head=False``
    leaves the contact regression out. Without them ``logits`` / ``contacts`` are not produced.
    ``fair_esm_half_rotary=True`` makes the rotary tables as fair-esm does in a ``.half()`` model
    whenever the model runs in fp16/bf16 (see :class:`RotaryEmbedding`; off by default: fp32 tables).

    ``.to()``, ``.cuda()``, ``.half()``, ``.bfloat16()``, ``.float()`` convert every weight as for any module
    (the rotary ``inv_freq`` stays float32, see :class:`RotaryEmbedding`); a backend chosen with
    :meth:`set_backend` (or ``from_pretrained(backend=...)``) is validated again for the new device before
    anything moves: ``auto`` resolves anew, one that cannot run there raises ``RuntimeError`` and the model
    stays put. Without a chosen backend the model runs the ``torch`` backend, which runs anywhere.
    """

    def __init__(
        self,
        num_layers: int | ESM2Config = 33,
        embed_dim: int = 1280,
        attention_heads: int = 20,
        alphabet: Alphabet | str | Any = "ESM-1b",
        token_dropout: bool = True,
        *,
        config: ESM2Config | None = None,
        lm_head: bool = True,
        contact_head: bool = True,
        fair_esm_half_rotary: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(num_layers, ESM2Config):
            config = num_layers
        alphabet = as_alphabet(alphabet)
        if config is None:
            config = ESM2Config(
                num_layers=num_layers,
                embed_dim=embed_dim,
                attention_heads=attention_heads,
                token_dropout=token_dropout,
                alphabet_size=len(alphabet),
                padding_idx=alphabet.padding_idx,
                mask_idx=alphabet.mask_idx,
                cls_idx=alphabet.cls_idx,
                eos_idx=alphabet.eos_idx,
            )
        _check_config(config, alphabet)
        self.config = config
        self.alphabet = alphabet
        self.num_layers = config.num_layers
        self.embed_dim = config.embed_dim
        self.attention_heads = config.attention_heads
        self.alphabet_size = config.alphabet_size
        self.padding_idx = config.padding_idx
        self.mask_idx = config.mask_idx
        self.cls_idx = config.cls_idx
        self.eos_idx = config.eos_idx
        self.prepend_bos = self.append_eos = True
        self.token_dropout = config.token_dropout
        eps = config.layer_norm_eps

        self.embed_tokens = nn.Embedding(config.alphabet_size, config.embed_dim, padding_idx=config.padding_idx)
        self.layers = nn.ModuleList(
            ESM2Layer(config.embed_dim, config.attention_heads, eps, config.rope_theta)
            for _ in range(config.num_layers)
        )
        self.contact_head = (
            ESM2ContactHead(config.num_layers * config.attention_heads, config.eos_idx) if contact_head else None
        )
        self.emb_layer_norm_after = nn.LayerNorm(config.embed_dim, eps=eps)
        self.lm_head = ESM2LMHead(config.embed_dim, self.embed_tokens.weight, eps) if lm_head else None
        # Why contacts cannot be computed (e.g. the regression file was missing); None = they can.
        self.contacts_unavailable: str | None = None if contact_head else "this ESM2 was built without a contact head"
        self.fair_esm_half_rotary = fair_esm_half_rotary
        self._backend_choice: str | None = None  # what set_backend was asked for; moves revalidate it

    def set_backend(self, name: str | _backend.Backend) -> _backend.Backend:
        """Validate ``name`` for this model's device and hand it to every module (see :mod:`.backend`)."""
        backend = _backend.set_backend(self, name, self.embed_tokens.weight.device)
        self._backend_choice = name if isinstance(name, str) else name.name
        return backend

    def _apply(self, fn, recurse=True):
        # Every conversion (.to, .cuda, .half ...) lands here; a chosen backend must run on the new device.
        if not recurse or self._backend_choice is None:
            return super()._apply(fn, recurse)
        device, _ = conversion_target(fn, self.embed_tokens.weight)
        backend = backend_for_move(self._backend_choice, device)
        super()._apply(fn, recurse)
        _backend.set_backend(self, backend, device)
        return self

    @property
    def fair_esm_half_rotary(self) -> bool:
        """Whether fp16/bf16 runs use fair-esm's half-precision rotary tables (:class:`RotaryEmbedding`)."""
        return all(layer.self_attn.rot_emb.fair_esm_half for layer in self.layers)

    @fair_esm_half_rotary.setter
    def fair_esm_half_rotary(self, value: bool) -> None:
        for layer in self.layers:
            layer.self_attn.rot_emb.fair_esm_half = bool(value)

    # ---------------------------------------------------------------------------------------------
    # forward
    # ---------------------------------------------------------------------------------------------

    def _ln(self, x: torch.Tensor, ln: nn.LayerNorm, residual: torch.Tensor | None = None):
        if residual is None:
            return self.ops.layer_norm(x, ln.weight, ln.bias, ln.eps)
        return self.ops.layer_norm(x, ln.weight, ln.bias, ln.eps, residual=residual)

    def _layers_fused_residual(self, x, key_padding_mask, need_head_weights, repr_layers, hidden, weights):
        """The layer stack with each residual add fused into the LayerNorm that follows it."""
        h = self._ln(x, self.layers[0].self_attn_layer_norm)  # [B, T, C]
        for i, layer in enumerate(self.layers):
            a, w = layer.self_attn(h, key_padding_mask, need_head_weights)  # [B, T, C]
            h, x = self._ln(a, layer.final_layer_norm, residual=x)  # x += attention
            f = layer.feed_forward(h)  # [B, T, C]
            h, x = self._ln(f, self._next_norm(i), residual=x)  # x += feed-forward
            if i + 1 in repr_layers:
                hidden[i + 1] = x
            if w is not None:
                weights.append(w)
        return h

    def _layers_inplace_residual(self, x, key_padding_mask, need_head_weights, repr_layers, hidden, weights):
        """The layer stack with each residual add done by its GEMM (beta = 1) into x, in place.

        For CPU inference: x += o @ W^T is one GEMM pass with no bias broadcast copy and no extra
        add, and on CPU every op costs a thread-pool synchronisation besides its memory traffic.
        """
        x = x.clone()  # the stream is updated in place: never the caller's (or hidden[0]'s) tensor
        h = self._ln(x, self.layers[0].self_attn_layer_norm)  # [B, T, C]
        for i, layer in enumerate(self.layers):
            o, w = layer.self_attn.attend(h, key_padding_mask, need_head_weights)  # [B, T, C]
            _add_linear_(x, o, layer.self_attn.out_proj)  # x += attention
            h = self._ln(x, layer.final_layer_norm)
            _add_linear_(x, F.gelu(layer.fc1(h)), layer.fc2)  # x += feed-forward
            h = self._ln(x, self._next_norm(i))
            if i + 1 in repr_layers:
                hidden[i + 1] = x.clone()
            if w is not None:
                weights.append(w)
        return h

    def _next_norm(self, i: int) -> nn.LayerNorm:
        """The LayerNorm applied after layer ``i``: the next layer's first, or emb_layer_norm_after."""
        return self.emb_layer_norm_after if i + 1 == len(self.layers) else self.layers[i + 1].self_attn_layer_norm

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings with token dropout and padding zeroed: [B, T] -> [B, T, C].

        Token dropout: ``<mask>`` embeddings are zeroed and the rest rescaled by
        (1 - 0.12) / (1 - observed mask ratio), the ratio taken over non-padding tokens.
        """
        x = self.embed_tokens(tokens)  # [B, T, C]
        keep = tokens.ne(self.padding_idx)  # [B, T]
        if self.token_dropout:
            is_mask = tokens.eq(self.mask_idx)
            ratio = is_mask.sum(-1).to(x.dtype) / keep.sum(-1).to(x.dtype)  # [B]
            scale = (1 - MASK_RATIO_TRAIN) / (1 - ratio)  # [B]
            mult = (keep & ~is_mask).to(x.dtype) * scale[:, None]  # [B, T]
        else:
            mult = keep.to(x.dtype)
        return x * mult.unsqueeze(-1)

    def forward(
        self,
        tokens: torch.Tensor,
        repr_layers: Iterable[int] = (),
        need_head_weights: bool = False,
        return_contacts: bool = False,
        *,
        return_logits: bool = True,
    ) -> dict[str, Any]:
        """Run the encoder on ``tokens`` [B, T] (cls ... eos, padded with ``padding_idx``).

        Returns ``logits`` [B, T, V] (when the model has an LM head and ``return_logits``),
        ``representations`` {layer: [B, T, C]} for ``repr_layers`` (0 = embeddings after token
        dropout, ``num_layers`` = after ``emb_layer_norm_after``), and with ``need_head_weights``
        ``attentions`` [B, L, H, T, T] (zero at padding); with ``return_contacts`` also
        ``contacts`` [B, T-2, T-2].
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, T], got shape {tuple(tokens.shape)}")
        if return_contacts:
            if self.contacts_unavailable is not None:
                raise RuntimeError(f"return_contacts=True: {self.contacts_unavailable}")
            need_head_weights = True
        repr_layers = set(repr_layers)
        padding_mask = tokens.eq(self.padding_idx)  # [B, T]
        x = self.embed(tokens)  # [B, T, C]
        hidden: dict[int, torch.Tensor] = {}
        if 0 in repr_layers:
            hidden[0] = x
        key_padding_mask = padding_mask if bool(padding_mask.any()) else None
        weights: list[torch.Tensor] = []

        # x is the residual stream. On CPU without autograd each residual add rides on its GEMM;
        # elsewhere (GPU kernels, training) it is fused into the LayerNorm that follows it.
        stack = self._layers_fused_residual
        if x.device.type == "cpu" and not torch.is_grad_enabled():
            stack = self._layers_inplace_residual
        h = stack(x, key_padding_mask, need_head_weights, repr_layers, hidden, weights)
        # h is now emb_layer_norm_after(x): the last layer's representation.
        if self.num_layers in repr_layers:
            hidden[self.num_layers] = h

        result: dict[str, Any] = {"representations": hidden}
        if self.lm_head is not None and return_logits:
            result["logits"] = self.lm_head(h)
        if need_head_weights:
            attentions = torch.stack(weights, 1)  # [B, L, H, T, T]
            if key_padding_mask is not None:
                keep = (~padding_mask).to(attentions.dtype)
                attentions = attentions * (keep[:, :, None] * keep[:, None, :])[:, None, None]
            result["attentions"] = attentions
            if return_contacts:
                result["contacts"] = self.contact_head(tokens, attentions)
        return result

    def predict_contacts(self, tokens: torch.Tensor) -> torch.Tensor:
        return self(tokens, return_contacts=True)["contacts"]

    # ---------------------------------------------------------------------------------------------
    # loading
    # ---------------------------------------------------------------------------------------------

    def reset_buffers(self) -> None:
        """Re-tie the LM head to the token embedding after the storage is replaced (``to_empty``)."""
        if self.lm_head is not None:
            self.lm_head.weight = self.embed_tokens.weight

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        lm_head: bool | None = None,
        backend: str | None = None,
        fair_esm_half_rotary: bool = False,
    ) -> "ESM2":
        """Load ESM-2 weights; nothing is ever downloaded.

        ``path`` is (a) a fair-esm ``.pt`` file (contact regression read from the sibling
        ``<name>-contact-regression.pt`` if present), (b) a transformers ``EsmModel`` /
        ``EsmForMaskedLM`` directory, (c) a fair-esm name (``esm2_t6_8M_UR50D``, from the torch hub
        cache) or (d) a hub name (``facebook/esm2_t6_8M_UR50D``, from the Hugging Face cache).
        ``lm_head=None`` builds the LM head when the checkpoint has one; ``fair_esm_half_rotary``: see
        :class:`RotaryEmbedding`. Returns an eval-mode model.
        """
        from .checkpoints import load_esm2

        model = load_esm2(cls, path, device, dtype, lm_head)
        model.fair_esm_half_rotary = fair_esm_half_rotary
        if backend is not None:
            model.set_backend(backend)
        return model.eval()


def _check_config(config: ESM2Config, alphabet: Alphabet) -> None:
    config.validate()
    if config.num_layers < 1:
        raise ValueError("ESM2 needs at least one layer")
    ids = (config.alphabet_size, config.padding_idx, config.mask_idx, config.cls_idx, config.eos_idx)
    ours = (len(alphabet), alphabet.padding_idx, alphabet.mask_idx, alphabet.cls_idx, alphabet.eos_idx)
    if ids != ours:
        raise ValueError(f"config token ids (size, pad, mask, cls, eos) {ids} do not match the ESM-2 alphabet {ours}")


__all__ = ["ESM2", "ESM2ContactHead", "ESM2LMHead", "ESM2Layer", "ESM2SelfAttention", "RotaryEmbedding"]
