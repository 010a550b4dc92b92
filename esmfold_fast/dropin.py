"""Drop-in acceleration of the ESM models users already have: ``accelerate(model)`` and ``restore(model)``.

    from esmfold_fast import accelerate, restore
    model = accelerate(EsmForProteinFolding.from_pretrained("facebook/esmfold_v1"))   # same object, in place
    model.infer_pdb("MKTAYIAKQR")                                                      # transformers' own API
    restore(model)                                                                     # back to the original

Supported: transformers ``EsmForProteinFolding``, ``EsmModel``, ``EsmForMaskedLM``, ``EsmForSequenceClassification``
and ``EsmForTokenClassification`` (their ``EsmModel``), fair-esm ``ESM2``, and fair-esm ``ESMFold`` (its ESM2 and
its folding blocks, recognised by attributes and class names since fair-esm's ESMFold needs openfold, which this
project cannot install; tested on a stand-in with its module layout). Anything else raises ``TypeError`` naming
the class and the supported ones.

How (per instance, nothing global; the pattern of Liger-Kernel's instance patching, with an undo):

- A few methods are bound into the ``__dict__`` of the model's own submodule instances; every previous entry is
  recorded on the instance, so :func:`restore` puts back exactly what was there and the model runs its class's
  own code again (bit-for-bit the original outputs). No class, no module-level function and no other instance is
  touched. The weights are never copied, cast or re-laid out: every parameter keeps its object and its storage
  (``data_ptr``), so ``state_dict()`` keys, ``save_pretrained``, ``.to()``, ``.half()``, ``train()``/``eval()``,
  hooks and wrappers that replace ``nn.Linear`` children (PEFT) keep working, and memory does not grow.
- Everything is read at call time from the host modules: weights, LayerNorm ``eps``, dropout probabilities,
  ``training``, ``chunk_size``, the rotary ``inv_freq``, the module children themselves. Nothing is cached.
- The backend is resolved per call for the device of the inputs (``auto``: ``triton`` on CUDA, ``torch``
  elsewhere), so a model moved after ``accelerate`` keeps working; ``triton`` named explicitly on a device
  that cannot run it raises at once in :func:`accelerate`.

What runs the fast path (everything else is the host's own code: embeddings, token dropout, recycling, heads,
losses, output classes and the output-capture hooks of transformers):

- ESM-2 language models: the attention core of every layer (rotary embedding + softmax attention, one op of the
  backend: fused SDPA on ``torch``, the flash kernel on ``triton``). The q/k/v and output projections, LayerNorms
  and feed-forward are the host's modules, called as modules. A call falls back to the host's original code, for
  that call only, when the fast core cannot give what was asked: ``output_attentions=True`` (a flash kernel does
  not return attention probabilities; fair-esm ``need_head_weights`` / ``return_contacts`` likewise), attention
  dropout in training mode with ``p > 0``, a 3-D/4-D or non-binary ``attention_mask``, per-sequence
  ``position_ids`` under rotary embeddings, decoders / cross-attention, fair-esm incremental state, ``attn_mask``,
  ``bias_k``/``bias_v`` or ``add_zero_attn``.
- ESMFold's folding trunk: every ``EsmFoldTriangularSelfAttentionBlock`` (fair-esm: ``TriangularSelfAttentionBlock``,
  the same layout) runs this package's block (row-chunked pair updates added in place into one copy of the pair
  state under ``no_grad``, the backend's triangle multiplication, triangle attention and LayerNorm), reading the
  host's weights. Falls back per call in training mode with any dropout ``p > 0`` (the host's dropout layout is
  kept exactly), when the two LayerNorms of a triangle multiplication have different ``eps`` (the fused op takes
  one), when ``seq_attention.gated`` is off, its ``rescale_factor`` or a triangle attention's ``inf`` was changed,
  a triangle attention has no gate, or a child module of the block was replaced or wrapped (e.g. PEFT LoRA
  layers) or carries a forward hook: this package's block reads the children's weights directly, only the
  original calls them as modules.
- transformers ESMFold's structure module: ``EsmFoldStructureModule.forward`` runs this package's structure module
  (AlphaFold2 Algorithm 20, about 6x faster on the CPU at L=256: one batched matmul for the scalar, point and
  pair-bias logits of the invariant point attention, the pair bias made once for all eight blocks), reading the
  host's weights and config; every other child (LayerNorms, dropouts, transition, backbone update, angle resnet)
  is called as the host's module, so dropout and hooks there behave as before. ``_offload_inference`` runs the
  original.

Gradients: with grad enabled the fast paths are differentiable (every backend op has a backward), so an
accelerated model trains with the same gradients as the original (within fp32 rounding); the LM of an
``EsmForProteinFolding`` is frozen by transformers itself and stays so.
"""

from __future__ import annotations

import contextvars
import sys
import types
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import backend as _backend
from . import trunk as _trunk

__all__ = ["accelerate", "restore", "is_accelerated", "SUPPORTED"]

SUPPORTED = (
    "transformers EsmForProteinFolding",
    "transformers EsmModel",
    "transformers EsmForMaskedLM",
    "transformers EsmForSequenceClassification",
    "transformers EsmForTokenClassification",
    "fair-esm ESM2",
    "fair-esm ESMFold",
)

_RECORD = "_esmfold_fast_patches"  # per instance: {attribute name: previous __dict__ value or _MISSING}
_CHOICE = "_esmfold_fast_backend"  # per patched instance: the backend name asked for ("auto" included)
_CALL_KW = "esmfold_fast_call"  # private kwarg an accelerated EsmModel passes down to its attention cores
# Inside an accelerated transformers EsmModel call: whether the current layer's attention took the fast path (its
# feed-forward then may too). Layers run attention before feed-forward, so each layer sees its own decision.
_HF_FAST_LAYER: contextvars.ContextVar[bool] = contextvars.ContextVar("esmfold_fast_hf_layer", default=False)


class _Missing:
    """'No instance attribute was there': one object, kept by copy/deepcopy/pickle so a copied model restores."""

    def __repr__(self) -> str:
        return "<missing>"

    def __copy__(self) -> "_Missing":
        return self

    def __deepcopy__(self, memo) -> "_Missing":
        return self

    def __reduce__(self) -> str:
        return "_MISSING"


_MISSING = _Missing()


# ------------------------------------------------------------------------------------------------
# per-instance binding with an undo record
# ------------------------------------------------------------------------------------------------


def _bind(module: nn.Module, name: str, value: Any) -> None:
    """Put ``value`` into ``module.__dict__[name]``, recording what was there for :func:`restore`.

    Only names that are no parameter, buffer or child of the module are ever bound (``nn.Module`` looks
    those up elsewhere and a plain attribute must not shadow them)."""
    if name in module._parameters or name in module._buffers or name in module._modules:
        raise RuntimeError(f"esmfold_fast.accelerate: {type(module).__name__}.{name} is a tensor or child module")
    record = module.__dict__.get(_RECORD)
    if record is None:
        record = {}
        module.__dict__[_RECORD] = record
    if name not in record:
        record[name] = module.__dict__.get(name, _MISSING)
    module.__dict__[name] = value


def _bind_method(module: nn.Module, name: str, fn: Callable) -> None:
    _bind(module, name, types.MethodType(fn, module))


def _original(module: nn.Module, name: str = "forward") -> Callable:
    """What ``module.<name>`` was before :func:`accelerate` bound it (the class's method unless another
    per-instance patch was there first)."""
    prev = module.__dict__.get(_RECORD, {}).get(name, _MISSING)
    if prev is not _MISSING:
        return prev
    return getattr(type(module), name).__get__(module, type(module))


def is_accelerated(model: nn.Module) -> bool:
    """Whether :func:`accelerate` has patched ``model`` (or any module inside it) and :func:`restore` has not
    undone it."""
    return any(_RECORD in m.__dict__ for m in model.modules())


def restore(model: nn.Module) -> nn.Module:
    """Undo :func:`accelerate` on ``model`` in place and return it: every attribute bound on any submodule is
    put back as it was (or removed), so the model runs its class's own code again and gives bit-for-bit the
    outputs it gave before. A model never accelerated is returned unchanged."""
    for module in _unwrap(model).modules():
        record = module.__dict__.pop(_RECORD, None)
        if not record:
            continue
        for name, prev in record.items():
            if prev is _MISSING:
                module.__dict__.pop(name, None)
            else:
                module.__dict__[name] = prev
    return model


# ------------------------------------------------------------------------------------------------
# backend resolution (per call, for the device the inputs are on)
# ------------------------------------------------------------------------------------------------


def _ops(module: nn.Module, device: torch.device) -> _backend.Backend:
    return _backend.get_backend(module.__dict__.get(_CHOICE, "auto"), device)


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# ------------------------------------------------------------------------------------------------
# class dispatch
# ------------------------------------------------------------------------------------------------


def _loaded_class(module_name: str, class_name: str) -> type | None:
    """The class if its module is already imported (a model of it can only exist then); never imports."""
    mod = sys.modules.get(module_name)
    return getattr(mod, class_name, None) if mod is not None else None


def _is(model: Any, module_name: str, class_name: str) -> bool:
    cls = _loaded_class(module_name, class_name)
    return cls is not None and isinstance(model, cls)


_HF = "transformers.models.esm.modeling_esm"
_HF_FOLD = "transformers.models.esm.modeling_esmfold"
_FAIR_ESM2 = "esm.model.esm2"
_FAIR_ESMFOLD = "esm.esmfold.v1.esmfold"
_HF_HEADS = ("EsmForMaskedLM", "EsmForSequenceClassification", "EsmForTokenClassification")


def _unwrap(model: Any) -> Any:
    """A PEFT ``PeftModel`` is accelerated through the model it wraps (its LoRA layers stay modules)."""
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base) and type(model).__name__.startswith("Peft"):
        return get_base()
    return model


def _unsupported(model: Any) -> TypeError:
    cls = type(model)
    return TypeError(
        f"esmfold_fast.accelerate does not support {cls.__module__}.{cls.__qualname__}; "
        f"supported: {', '.join(SUPPORTED)}"
    )


def accelerate(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Make ``model`` run on esmfold-fast's kernels, in place; returns the same object.

    ``model``: transformers ``EsmForProteinFolding``, ``EsmModel``, ``EsmForMaskedLM``,
    ``EsmForSequenceClassification``, ``EsmForTokenClassification``, or fair-esm ``ESM2`` / ``ESMFold``.
    ``backend``: ``auto`` (``triton`` on CUDA, ``torch`` elsewhere, resolved per call for the inputs' device),
    ``torch``, ``triton`` or ``reference``; an unknown name, or one that cannot run where the model is, raises.

    The public API, output types and parameters are unchanged (see the module docstring for what runs fast and
    when a call falls back to the original code, e.g. ``output_attentions=True``). Calling it again switches
    the backend. :func:`restore` undoes it.
    """
    target = _unwrap(model)
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a name (auto, {', '.join(_backend.BACKENDS)}), got {backend!r}")
    _backend.get_backend(backend, _model_device(target) if isinstance(target, nn.Module) else None)  # validate now
    patched = 0
    if _is(target, _HF_FOLD, "EsmForProteinFolding"):
        patched += _patch_hf_esm_model(target.esm, backend)
        patched += _patch_hf_trunk(target.trunk, backend)
        patched += _patch_hf_structure_module(target.trunk)
    elif _is(target, _HF, "EsmModel"):
        patched += _patch_hf_esm_model(target, backend)
    elif any(_is(target, _HF, n) for n in _HF_HEADS):
        patched += _patch_hf_esm_model(target.esm, backend)
    elif _is(target, _FAIR_ESM2, "ESM2"):
        patched += _patch_fair_esm2(target, backend)
    elif _is(target, _FAIR_ESMFOLD, "ESMFold") or _looks_like_fair_esmfold(target):
        patched += _patch_fair_esm2(target.esm, backend)
        patched += _patch_fair_trunk(target.trunk, backend)
    else:
        raise _unsupported(model)
    if patched == 0:
        raise RuntimeError(f"esmfold_fast.accelerate found nothing to accelerate in {type(model).__name__}")
    return model


def _looks_like_fair_esmfold(model: Any) -> bool:
    """fair-esm's ``ESMFold`` needs openfold to import; recognise it by its attributes: an ``esm`` that is a
    fair-esm ``ESM2`` beside ``esm_s_combine`` and a ``trunk``."""
    return (
        isinstance(model, nn.Module)
        and type(model).__name__ == "ESMFold"
        and _is(getattr(model, "esm", None), _FAIR_ESM2, "ESM2")
        and hasattr(model, "esm_s_combine")
        and hasattr(model, "trunk")
    )


# ------------------------------------------------------------------------------------------------
# transformers EsmModel: the attention core of every layer
# ------------------------------------------------------------------------------------------------


class _LMCall:
    """What an accelerated ``EsmModel.forward`` hands its attention cores for one call."""

    __slots__ = ("key_padding_mask",)

    def __init__(self, key_padding_mask: torch.Tensor | None):
        self.key_padding_mask = key_padding_mask  # [B, T] bool, True = padding; None: no padding


def _lm_call(model: nn.Module, attention_mask, encoder_hidden_states, kwargs: dict) -> _LMCall | None:
    """The fast-path plan of one ``EsmModel`` call, or None when the call must run the original code."""
    config = model.config
    if kwargs.get("output_attentions", getattr(config, "output_attentions", False)):
        return None  # the fused core returns no attention probabilities
    if getattr(config, "is_decoder", False) or encoder_hidden_states is not None:
        return None
    if getattr(model, "position_embedding_type", None) not in ("rotary", "absolute"):
        return None
    kpm = None
    if attention_mask is not None:
        if attention_mask.dim() != 2:
            return None  # a custom 3-D / 4-D mask: only the original knows what it means
        if attention_mask.dtype == torch.bool:
            kpm = ~attention_mask
        else:
            if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
                return None
            kpm = attention_mask == 0
        if bool(kpm.all(dim=-1).any()):
            return None  # a sequence with no token at all: leave it to the original
        if not bool(kpm.any()):
            kpm = None
    return _LMCall(kpm)


def _hf_esm_model_forward(
    self,
    input_ids=None,
    attention_mask=None,
    position_ids=None,
    inputs_embeds=None,
    encoder_hidden_states=None,
    encoder_attention_mask=None,
    **kwargs,
):
    """``EsmModel.forward`` (transformers' own, decorators included) with a fast attention core in every layer
    when the call allows it; see :mod:`esmfold_fast.dropin`."""
    call = _lm_call(self, attention_mask, encoder_hidden_states, kwargs)
    if call is not None:
        kwargs[_CALL_KW] = call
    token = _HF_FAST_LAYER.set(False)
    try:
        return _original(self)(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            **kwargs,
        )
    finally:
        _HF_FAST_LAYER.reset(token)


def _hf_self_attention_forward(
    self,
    hidden_states,
    attention_mask=None,
    encoder_hidden_states=None,
    encoder_attention_mask=None,
    position_embeddings=None,
    **kwargs,
):
    """transformers ``EsmSelfAttention.forward`` with the rotary + softmax core as one backend op.

    Returns ``(attn_output [B, T, C], None)``. Runs the original when the call is not an accelerated one (no
    plan from the model), under attention dropout in training, for cross-attention, or with per-sequence
    rotary tables."""
    call = kwargs.pop(_CALL_KW, None)

    def original():
        _HF_FAST_LAYER.set(False)  # this layer's feed-forward runs the original code too
        return _original(self)(
            hidden_states,
            attention_mask=attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            position_embeddings=position_embeddings,
            **kwargs,
        )

    if call is None or encoder_hidden_states is not None or getattr(self, "is_causal", False):
        return original()
    if self.training and float(self.dropout) > 0.0:
        return original()
    B, T, _ = hidden_states.shape
    H, D = self.num_attention_heads, self.attention_head_size
    if self.position_embedding_type == "rotary":
        if position_embeddings is None:
            return original()
        cos, sin = position_embeddings  # [1 or B, T, D] in the activations' dtype, from transformers' tables
        if cos.dim() == 3:
            if cos.shape[0] != 1:
                return original()  # per-sequence position ids
            cos, sin = cos[0], sin[0]
        cos, sin = cos.float(), sin.float()
    elif self.position_embedding_type == "absolute":  # positions are in the embeddings: identity rotation
        cos = torch.ones(T, D, dtype=torch.float32, device=hidden_states.device)
        sin = torch.zeros(T, D, dtype=torch.float32, device=hidden_states.device)
    else:
        return original()
    q = self.query(hidden_states).view(B, T, H, D)
    k = self.key(hidden_states).view(B, T, H, D)
    v = self.value(hidden_states).view(B, T, H, D)
    ops = _ops(self, hidden_states.device)
    out = ops.rotary_attention(q, k, v, cos, sin, call.key_padding_mask, D**-0.5)  # [B, T, H, D]
    _HF_FAST_LAYER.set(True)
    return out.reshape(B, T, H * D), None


def _patch_lm(model: nn.Module, backend: str, forward: Callable, attention: type | None, attention_forward: Callable) -> int:
    """Bind ``forward`` on the LM and ``attention_forward`` on each of its ``attention`` modules; how many."""
    n = 0
    _bind(model, _CHOICE, backend)
    _bind_method(model, "forward", forward)
    for module in model.modules():
        if attention is not None and isinstance(module, attention):
            _bind(module, _CHOICE, backend)
            _bind_method(module, "forward", attention_forward)
            n += 1
    return n


def _patch_hf_esm_model(model: nn.Module, backend: str) -> int:
    attention = _loaded_class(_HF, "EsmSelfAttention")
    intermediate = _loaded_class(_HF, "EsmIntermediate")
    for module in model.modules():
        if intermediate is not None and isinstance(module, intermediate):
            _bind_method(module, "forward", _hf_intermediate_forward)
    return _patch_lm(model, backend, _hf_esm_model_forward, attention, _hf_self_attention_forward)


def _hf_intermediate_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """transformers ``EsmIntermediate.forward`` with torch's exact (erf) GELU in one pass: ESM's own formula,
    ``x * 0.5 * (1 + erf(x / sqrt 2))``, makes five passes over the ``[B, T, 4C]`` activations (14% of a layer
    at L = 1024); the two agree to 1e-7 relative, as this package's ESM2 does with fair-esm's. Only in a layer
    whose attention took the fast path: a call that falls back stays bit-for-bit the original."""
    if not _HF_FAST_LAYER.get():
        return _original(self)(hidden_states)
    return F.gelu(self.dense(hidden_states))


# ------------------------------------------------------------------------------------------------
# transformers ESMFold trunk: every folding block
# ------------------------------------------------------------------------------------------------

# Methods of this package's trunk modules bound onto the transformers instances whose attribute and child names
# they read (checked one by one: layernorm/proj/o_proj, layernorm/linear, proj/g_proj/o_proj/num_heads/
# head_width/embed_dim, layer_norm/linear/mha/starting/no_heads/c_hidden, mlp[0..3], linear_*/layer_norm_in/_out).
# None of these names exists on the transformers classes (asserted when binding).
_TRUNK_METHODS = {
    "sequence_to_pair": (_trunk.SequenceToPair, ("add_to_",)),
    "tri_att_start": (_trunk.TriangleAttention, ("add_to_", "triangle_bias", "_norm")),
    "tri_att_end": (_trunk.TriangleAttention, ("add_to_", "triangle_bias", "_norm")),
    "mlp_seq": (_trunk.ResidueMLP, ("forward_sequence", "add_to_pair_", "update", "_hidden_from_normed")),
    "mlp_pair": (_trunk.ResidueMLP, ("forward_sequence", "add_to_pair_", "update", "_hidden_from_normed")),
    "tri_mul_out": (_trunk.TriangleMultiplicativeUpdate, ("weights",)),
    "tri_mul_in": (_trunk.TriangleMultiplicativeUpdate, ("weights",)),
}
# Children whose methods read ``self.ops``.
_OPS_CHILDREN = (
    "sequence_to_pair", "pair_to_sequence", "seq_attention", "tri_att_start", "tri_att_end", "mlp_seq", "mlp_pair",
)  # fmt: skip
_TRIANGLE_INF = 1e9  # the masked-key penalty of the backend's triangle attention (OpenFold's inf)


def _bind_unique(module: nn.Module, name: str, fn: Callable) -> None:
    if hasattr(type(module), name):
        raise RuntimeError(f"esmfold_fast.accelerate: {type(module).__name__} already has {name!r}")
    _bind_method(module, name, fn)


def _set_ops(block: nn.Module, ops: _backend.Backend) -> None:
    """Hand ``ops`` to the block and the children whose methods read ``self.ops`` (only when it changed)."""
    if block.__dict__.get("ops") is ops:
        return
    _bind(block, "ops", ops)
    for name in _OPS_CHILDREN:
        _bind(getattr(block, name), "ops", ops)


def _block_dropouts(block: nn.Module) -> list[float]:
    """Every dropout probability the transformers block applies, read live."""
    ps = [block.drop.p, block.row_drop.dropout.p, block.col_drop.dropout.p]
    for mlp in (block.mlp_seq, block.mlp_pair):
        ps += [m.p for m in mlp.mlp if isinstance(m, nn.Dropout)]
    return ps


def _known_block_types() -> tuple[type, ...]:
    """The module types of transformers' folding block, whose weights this package's block reads directly."""
    hf = sys.modules.get(_HF_FOLD)
    names = (
        "EsmFoldTriangularSelfAttentionBlock", "EsmFoldSequenceToPair", "EsmFoldPairToSequence", "EsmFoldSelfAttention",
        "EsmFoldTriangleMultiplicativeUpdate", "EsmFoldTriangleAttention", "EsmFoldAttention", "EsmFoldResidueMLP",
        "EsmFoldDropout", "EsmFoldLinear", "EsmFoldLayerNorm",
    )  # fmt: skip
    types_ = tuple(getattr(hf, n) for n in names if hf is not None and hasattr(hf, n))
    return types_ + (nn.Linear, nn.LayerNorm, nn.ReLU, nn.Dropout, nn.Sigmoid, nn.Sequential)


# fair-esm's folding block and the openfold modules inside it, by (module, class name): openfold cannot be
# imported here, and its layout (attribute and child names) is the one transformers ported.
_FAIR_FOLD_BLOCK = ("esm.esmfold.v1.tri_self_attn_block", "TriangularSelfAttentionBlock")
_FAIR_FOLD_TYPES = {
    _FAIR_FOLD_BLOCK,
    *(("esm.esmfold.v1.misc", n) for n in ("Attention", "Dropout", "SequenceToPair", "PairToSequence", "ResidueMLP")),
    ("openfold.model.triangular_multiplicative_update", "TriangleMultiplicationOutgoing"),
    ("openfold.model.triangular_multiplicative_update", "TriangleMultiplicationIncoming"),
    *(("openfold.model.triangular_attention", n)
      for n in ("TriangleAttention", "TriangleAttentionStartingNode", "TriangleAttentionEndingNode")),
    *(("openfold.model.primitives", n) for n in ("Attention", "Linear", "LayerNorm")),
}  # fmt: skip


def _type_key(m: nn.Module) -> tuple[str, str]:
    return type(m).__module__, type(m).__name__


def _block_needs_original(block: nn.Module) -> bool:
    known = _known_block_types()
    for m in block.modules():
        # A wrapped or replaced child (a PEFT LoRA layer, a quantised Linear) or a hook on a child: only the
        # original calls the children as modules, so only it gives what the user set up.
        if type(m) not in known and _type_key(m) not in _FAIR_FOLD_TYPES:
            return True
        if m is not block and (m._forward_hooks or m._forward_pre_hooks):
            return True
    if block.training and any(p > 0.0 for p in _block_dropouts(block)):
        return True
    att = block.seq_attention
    if not getattr(att, "gated", True) or att.rescale_factor != att.head_width**-0.5:
        return True
    for tm in (block.tri_mul_out, block.tri_mul_in):
        if tm.layer_norm_in.eps != tm.layer_norm_out.eps:
            return True
    for ta in (block.tri_att_start, block.tri_att_end):
        if ta.mha.linear_g is None or ta.inf != _TRIANGLE_INF:
            return True
    return False


def _trimul_add_(tm: nn.Module, z: torch.Tensor, mask, plan, ops: _backend.Backend) -> torch.Tensor:
    """``z + tri_mul(z)`` for a transformers ``EsmFoldTriangleMultiplicativeUpdate`` (direction ``_outgoing``),
    into z in place under no_grad when the backend op can add into z."""
    op = ops.triangle_multiplicative_update
    w = _trunk.TriangleMultiplicativeUpdate.weights(tm)
    kw = dict(outgoing=bool(tm._outgoing), eps=tm.layer_norm_in.eps, chunk_size=plan.chunk_size)
    if _trunk._inplace_ok() and getattr(op, "supports_add_into_z", False):
        return op(z, mask, w, add_into_z=True, **kw)
    update = op(z, mask, w, **kw)
    return z.add_(update) if _trunk._inplace_ok() else z + update


def _hf_block_forward(self, sequence_state, pairwise_state, mask=None, chunk_size=None, **kwargs):
    """transformers ``EsmFoldTriangularSelfAttentionBlock.forward`` run by this package's block (same
    signature and outputs ``(s, z)``; the inputs are never modified). Mirrors
    :meth:`esmfold_fast.trunk.TriangularSelfAttentionBlock.forward`: under no_grad the row-chunked pair updates
    go in place into one copy of ``pairwise_state``, so no ``L x L x 4 c_z`` temporary is ever pair-wide."""
    if _block_needs_original(self):
        return _original(self)(sequence_state, pairwise_state, mask=mask, chunk_size=chunk_size, **kwargs)
    s, z = sequence_state, pairwise_state
    if s.dim() != 3 or z.dim() != 4 or (mask is not None and mask.dim() != 2):
        return _original(self)(sequence_state, pairwise_state, mask=mask, chunk_size=chunk_size, **kwargs)  # its errors
    if z.shape[:3] != (s.shape[0], s.shape[1], s.shape[1]):
        return _original(self)(sequence_state, pairwise_state, mask=mask, chunk_size=chunk_size, **kwargs)
    ops = _ops(self, z.device)
    _set_ops(self, ops)
    if _trunk._inplace_ok():
        z = z.clone()  # updated in place below: never the caller's tensor (one pair-sized copy per block)
    if mask is not None:
        mask = mask.to(z.dtype)
        if bool(mask.all()):
            mask = None  # no padding: every op skips its mask
    plan = ops.chunk_plan(z, chunk_size)
    T = _trunk

    # Sequence track: attention biased by the pair state, then the MLP.
    bias = T.PairToSequence.forward(self.pair_to_sequence, z, plan)  # [B, H, L, L]
    ln = self.layernorm_1
    y = T.SequenceSelfAttention.forward(self.seq_attention, ops.layer_norm(s, ln.weight, ln.bias, ln.eps), mask, bias)
    del bias
    s = self.mlp_seq.forward_sequence(s, y)

    # Pair track.
    s2p = self.sequence_to_pair
    s2p.__dict__["inner_dim"] = s2p.proj.out_features // 2  # derived from the live module, not stored
    z = s2p.add_to_(z, s, plan)
    tri_mask = None if mask is None else mask[:, :, None] * mask[:, None, :]  # [B, L, L]
    z = _trimul_add_(self.tri_mul_out, z, tri_mask, plan, ops)
    z = _trimul_add_(self.tri_mul_in, z, tri_mask, plan, ops)
    z = self.tri_att_start.add_to_(z, tri_mask, plan)
    z = self.tri_att_end.add_to_(z, tri_mask, plan)
    z = self.mlp_pair.add_to_pair_(z, plan)
    return s, z


def _patch_trunk_blocks(trunk: nn.Module, backend: str, is_block: Callable[[nn.Module], bool]) -> int:
    """Bind the accelerated block forward (and the methods it calls) onto every folding block in ``trunk``."""
    n = 0
    for block in trunk.modules():
        if not is_block(block):
            continue
        for child, (ours, names) in _TRUNK_METHODS.items():
            module = getattr(block, child)
            for name in names:
                if name not in module.__dict__:
                    _bind_unique(module, name, getattr(ours, name))
        for ta in (block.tri_att_start, block.tri_att_end):
            if "fused_qkvg" not in ta.mha.__dict__:
                _bind_unique(ta.mha, "fused_qkvg", _trunk.TriangleMHA.fused_qkvg)
        s2p = block.sequence_to_pair
        _bind(s2p, "inner_dim", s2p.proj.out_features // 2)
        _bind(block, _CHOICE, backend)
        _bind(block, "ops", None)
        _bind_method(block, "forward", _hf_block_forward)
        n += 1
    return n


def _patch_hf_trunk(trunk: nn.Module, backend: str) -> int:
    cls = _loaded_class(_HF_FOLD, "EsmFoldTriangularSelfAttentionBlock")
    return _patch_trunk_blocks(trunk, backend, lambda m: cls is not None and isinstance(m, cls))


def _patch_fair_trunk(trunk: nn.Module, backend: str) -> int:
    return _patch_trunk_blocks(trunk, backend, lambda m: _type_key(m) == _FAIR_FOLD_BLOCK)


# ------------------------------------------------------------------------------------------------
# transformers ESMFold structure module (AlphaFold2 Algorithm 20)
# ------------------------------------------------------------------------------------------------


def _hf_structure_module_forward(self, evoformer_output_dict, aatype, mask=None, _offload_inference=False):
    """transformers ``EsmFoldStructureModule.forward`` run by this package's structure module (same arguments
    and output dict). Mirrors :meth:`esmfold_fast.structure_module.StructureModule.forward`: the invariant point
    attention is :class:`esmfold_fast.structure_module.InvariantPointAttention`'s (one batched matmul for the
    scalar, point and pair-bias logits, the pair bias made once for all blocks), reading the host's weights; every
    other child (LayerNorms, transition, backbone update, angle resnet, dropouts) is called as the host's module.
    ``_offload_inference``, a replaced IPA module or hooks on it run the original."""
    from . import rigid as R
    from . import structure_module as SM

    ipa = self.ipa
    ipa_cls = _loaded_class(_HF_FOLD, "EsmFoldInvariantPointAttention")
    if _offload_inference or type(ipa) is not ipa_cls or ipa._forward_hooks or ipa._forward_pre_hooks:
        # offloading, a replaced IPA, or hooks on it (this path calls the IPA's math, not the module)
        return _original(self)(evoformer_output_dict, aatype, mask=mask, _offload_inference=_offload_inference)
    cfg = self.config
    ipa.__dict__["cfg"] = ipa.config  # our IPA reads ``cfg``: the host's config object, read at call time
    s = evoformer_output_dict["single"]
    if mask is None:
        mask = s.new_ones(s.shape[:-1])
    fd = SM._frame_dtype(s.dtype)
    self._init_residue_constants(fd, s.device)  # the host's lazily made geometry tables
    default_frames = self.default_frames.to(device=s.device, dtype=fd)
    atom_mask = self.atom_mask.to(device=s.device, dtype=fd)
    lit_positions = self.lit_positions.to(device=s.device, dtype=fd)
    group_idx = self.group_idx.to(s.device)

    s = self.layer_norm_s(s)  # [B, L, c_s]
    z = self.layer_norm_z(evoformer_output_dict["pair"])  # [B, L, L, c_z]
    pair_bias = SM.InvariantPointAttention.pair_bias(ipa, z, mask)  # [B, H, L, L], shared by all blocks
    s_initial = s
    s = self.linear_in(s)

    quats, trans = R.identity_backbone(s.shape[:-1], fd, s.device)  # [B, L, 4], [B, L, 3]
    rot = R.quat_to_rot(quats)  # [B, L, 3, 3]
    keys = ("frames", "sidechain_frames", "unnormalized_angles", "angles", "positions", "states")
    outputs: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for _ in range(cfg.num_blocks):
        s = s + SM.InvariantPointAttention.forward(ipa, s, z, pair_bias, R.Rigid(rot, trans), mask)
        s = self.layer_norm_ipa(self.ipa_dropout(s))
        s = self.transition(s)

        quats, trans = R.compose_q_update_vec(quats, rot, trans, self.bb_update(s).to(fd))
        rot = R.quat_to_rot(quats)
        backbone = R.Rigid(rot, trans * cfg.trans_scale_factor)

        unnormalized_angles, angles = self.angle_resnet(s, s_initial)
        all_frames = R.torsion_angles_to_frames(backbone, angles.to(fd), aatype, default_frames)
        positions = R.frames_and_literature_positions_to_atom14_pos(
            all_frames, aatype, group_idx, atom_mask, lit_positions
        )
        outputs["frames"].append(torch.cat([quats, backbone.trans], dim=-1))
        outputs["sidechain_frames"].append(all_frames.to_tensor_4x4())
        outputs["unnormalized_angles"].append(unnormalized_angles)
        outputs["angles"].append(angles)
        outputs["positions"].append(positions)
        outputs["states"].append(s)
        quats, rot = quats.detach(), rot.detach()  # no gradient through the rotation into the next block

    result = {k: torch.stack(v) for k, v in outputs.items()}
    result["single"] = s
    return result


def _patch_hf_structure_module(trunk: nn.Module) -> int:
    from . import structure_module as SM

    cls = _loaded_class(_HF_FOLD, "EsmFoldStructureModule")
    module = getattr(trunk, "structure_module", None)
    if cls is None or not isinstance(module, cls):
        return 0
    ipa = module.ipa
    for name in ("pair_bias", "_points"):
        if name not in ipa.__dict__:
            _bind_unique(ipa, name, getattr(SM.InvariantPointAttention, name))
    _bind(ipa, "cfg", ipa.config)
    _bind_method(module, "forward", _hf_structure_module_forward)
    return 1


# ------------------------------------------------------------------------------------------------
# fair-esm ESM2: the attention core of every layer
# ------------------------------------------------------------------------------------------------

# Set by an accelerated fair-esm ESM2.forward that does not want head weights: its layers always ask their
# attention for (head-averaged) weights and the model discards them, so inside such a call they may be skipped.
_FAIR_DISCARDS_WEIGHTS: contextvars.ContextVar[int | None] = contextvars.ContextVar("esmfold_fast_fair", default=None)


def _fair_esm2_forward(self, tokens, repr_layers=[], need_head_weights=False, return_contacts=False):  # noqa: B006
    """fair-esm ``ESM2.forward`` (its own code) with fast attention cores when no head weights are needed."""
    if need_head_weights or return_contacts:
        return _original(self)(tokens, repr_layers=repr_layers, need_head_weights=need_head_weights,
                               return_contacts=return_contacts)  # fmt: skip
    token = _FAIR_DISCARDS_WEIGHTS.set(id(self))
    try:
        return _original(self)(tokens, repr_layers=repr_layers, need_head_weights=False, return_contacts=False)
    finally:
        _FAIR_DISCARDS_WEIGHTS.reset(token)


def _fair_rotary_tables(rot_emb: nn.Module, T: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, D] exactly as fair-esm's ``RotaryEmbedding`` makes them (in ``inv_freq``'s dtype), from the
    live ``inv_freq``, returned as fp32 (exact)."""
    inv_freq = rot_emb.inv_freq
    t = torch.arange(T, device=device).type_as(inv_freq)
    freqs = torch.einsum("i,j->ij", t, inv_freq.to(device))
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().float(), emb.sin().float()


def _fair_mha_forward(
    self,
    query,
    key,
    value,
    key_padding_mask=None,
    incremental_state=None,
    need_weights=True,
    static_kv=False,
    attn_mask=None,
    before_softmax=False,
    need_head_weights=False,
):
    """fair-esm ``MultiheadAttention.forward`` ([T, B, C] in and out) with the rotary + softmax core as one
    backend op; weights are returned as None (only where the caller discards them)."""
    args = (query, key, value, key_padding_mask, incremental_state, need_weights, static_kv, attn_mask,
            before_softmax, need_head_weights)  # fmt: skip
    discards = _FAIR_DISCARDS_WEIGHTS.get() is not None
    if (
        need_head_weights
        or (need_weights and not discards)
        or incremental_state is not None
        or static_kv
        or attn_mask is not None
        or before_softmax
        or self.rot_emb is None
        or self.bias_k is not None
        or self.add_zero_attn
        or (self.training and float(self.dropout) > 0.0)
        or key is not query
        or value is not query
    ):
        return _original(self)(*args)
    T, B, C = query.shape
    H, D = self.num_heads, self.head_dim
    q = self.q_proj(query).view(T, B, H, D).transpose(0, 1)  # [B, T, H, D] views
    k = self.k_proj(query).view(T, B, H, D).transpose(0, 1)
    v = self.v_proj(query).view(T, B, H, D).transpose(0, 1)
    cos, sin = _fair_rotary_tables(self.rot_emb, T, query.device)
    kpm = None if key_padding_mask is None else key_padding_mask.bool()
    ops = _ops(self, query.device)
    out = ops.rotary_attention(q, k, v, cos, sin, kpm, float(self.scaling))  # [B, T, H, D]
    out = out.transpose(0, 1).reshape(T, B, C)
    return self.out_proj(out), None


def _patch_fair_esm2(model: nn.Module, backend: str) -> int:
    if not _is(model, _FAIR_ESM2, "ESM2"):
        raise _unsupported(model)
    attention = _loaded_class("esm.multihead_attention", "MultiheadAttention")
    return _patch_lm(model, backend, _fair_esm2_forward, attention, _fair_mha_forward)
