"""Backward through the folding trunk and ESM-2: every backend's gradients against the reference backend's.

Every parameter is randomised (zero-initialised layers would hide a missing gradient), inputs have
std > 1, the padding mask is on, dropout is off (eval) and the in-place inference paths are off (grad
on). The loss weighs only real residues and pairs, as a training loss does.

* ``torch`` runs float64 like the reference: its gradients must be exact to rounding.
* ``triton`` runs fp32 (the kernels' widest type) under the interpreter on CPU: per parameter, its
  error against the float64 reference is at most 3x the fp32 reference's error plus a small floor
  (the error-ratio discipline of the kernel tests).
"""

from __future__ import annotations

import pytest
import torch

from _util import DEVICE, randomize_
from esmfold_fast.backend import set_backend
from esmfold_fast.config import StructureModuleConfig, TrunkConfig
from esmfold_fast.esm2 import ESM2
from esmfold_fast.trunk import FoldingTrunk, TriangularSelfAttentionBlock

WIDTHS = dict(sequence_state_dim=32, pairwise_state_dim=16, sequence_head_width=8, pairwise_head_width=8)
SM = dict(sequence_dim=16, pairwise_dim=8, ipa_dim=8, resnet_dim=8, num_heads_ipa=2, num_blocks=2)
L = 13
EXACT = 1e-12  # float64 torch backend against the float64 reference, relative to max |grad|
FP32_FLOOR = 2e-6  # added to 3x the fp32 reference's relative error
STRUCTURAL_ZERO = 1e-10  # a gradient below this times the largest one is zero in exact arithmetic


def _config(num_blocks: int = 1) -> TrunkConfig:
    return TrunkConfig(num_blocks=num_blocks, max_recycles=1, structure_module=StructureModuleConfig(**SM), **WIDTHS)


def _data(seed: int):
    gen = torch.Generator().manual_seed(seed)
    c_s, c_z = WIDTHS["sequence_state_dim"], WIDTHS["pairwise_state_dim"]
    s = 2.0 * torch.randn(2, L, c_s, generator=gen, dtype=torch.float64)
    z = 2.0 * torch.randn(2, L, L, c_z, generator=gen, dtype=torch.float64)
    mask = torch.ones(2, L, dtype=torch.float64)
    mask[1, L - L // 3 :] = 0  # the second sequence is padded
    cot = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in (s, z)]  # upstream gradients
    return s, z, mask, cot


def _valid(mask):
    v = mask.bool()
    return v[:, :, None], (v[:, :, None] & v[:, None, :])[..., None]


def _gradients(module: torch.nn.Module, backend: str, dtype: torch.dtype, loss_fn, leaves):
    """{name: grad (on the CPU) or None} of every parameter and of the input ``leaves`` after
    ``loss_fn(module, **leaves)``. The triton backend runs on the kernel tests' device."""
    device = DEVICE if backend == "triton" else torch.device("cpu")
    module = module.to(device, dtype)
    set_backend(module, backend)
    leaves = {k: t.detach().to(device, dtype, copy=True).requires_grad_(True) for k, t in leaves.items()}
    loss_fn(module, **leaves).backward()
    grads = {name: p.grad for name, p in module.named_parameters()}
    grads.update({f"input.{k}": t.grad for k, t in leaves.items()})
    return {k: None if g is None else g.cpu() for k, g in grads.items()}


def _errors(make_module, loss_fn, leaves, backend: str, dtype: torch.dtype) -> dict[str, tuple[float, float]]:
    """{name: (relative error of ``backend`` in ``dtype``, of the reference in ``dtype``)} against the float64
    reference's gradients (max abs over max |reference|); asserts first that exactly the reference's
    gradients exist and that none of them is identically zero."""
    exact = _gradients(make_module(), "reference", torch.float64, loss_fn, leaves)
    got = _gradients(make_module(), backend, dtype, loss_fn, leaves)
    same = exact if dtype == torch.float64 else _gradients(make_module(), "reference", dtype, loss_fn, leaves)
    missing = sorted(k for k, g in exact.items() if g is not None and got[k] is None)
    extra = sorted(k for k, g in exact.items() if g is None and got[k] is not None)
    assert not missing and not extra, f"{backend}: missing gradients {missing}, unexpected {extra}"
    zero = sorted(k for k, g in exact.items() if g is not None and not g.abs().max() > 0)
    assert not zero, f"reference gradients that are zero everywhere: {zero}"
    scale = max(g.abs().max().item() for g in exact.values() if g is not None)
    errors = {}
    for k, g in exact.items():
        if g is None:
            continue
        # A per-head constant added to attention logits (the LayerNorm bias feeding a bias projection)
        # leaves the softmax unchanged: that gradient is zero up to rounding, so measure its error
        # against the largest gradient rather than against its own rounding noise.
        denom = g.abs().max().item()
        denom = denom if denom > STRUCTURAL_ZERO * scale else scale
        errors[k] = tuple(((t.double() - g).abs().max() / denom).item() for t in (got[k], same[k]))
    return errors


def _check(errors: dict[str, tuple[float, float]], dtype: torch.dtype) -> None:
    if dtype == torch.float64:
        bad = {k: e for k, (e, _) in errors.items() if not e < EXACT}
    else:
        bad = {k: (e, r) for k, (e, r) in errors.items() if not e <= 3 * r + FP32_FLOOR}
    assert not bad, bad


def _block_case(seed: int = 1):
    s, z, mask, (gs, gz) = _data(seed)
    vs, vz = _valid(mask)

    def make():
        return randomize_(TriangularSelfAttentionBlock(_config()), seed=seed + 1).eval()

    def loss(block, s, z):
        like = dict(device=s.device, dtype=s.dtype)
        out_s, out_z = block(s, z, mask=mask.to(**like), chunk_size=5)  # several row chunks per update
        return (out_s * (gs * vs).to(**like)).sum() + (out_z * (gz * vz).to(**like)).sum()

    return make, loss, {"s": s, "z": z}


def _trunk_case(seed: int = 3):
    s, z, mask, (gs, gz) = _data(seed)
    vs, vz = _valid(mask)
    gen = torch.Generator().manual_seed(seed + 1)
    aa = torch.randint(0, 20, (2, L), generator=gen)
    residx = torch.arange(L).expand(2, -1).clone()
    g_pos = torch.randn(2, L, 14, 3, generator=gen, dtype=torch.float64)

    def make():
        trunk = randomize_(FoldingTrunk(_config(num_blocks=1)), seed=seed + 2).eval()
        trunk.set_chunk_size(5)
        return trunk

    def loss(trunk, s, z):
        like = dict(device=s.device, dtype=s.dtype)
        out = trunk(s, z, aa.to(s.device), residx.to(s.device), mask.to(**like), num_recycles=0)  # one pass
        pos = out["positions"][-1]  # [B, L, 14, 3], the structure module's atoms
        return (
            (out["s_s"] * (gs * vs).to(**like)).sum()
            + (out["s_z"] * (gz * vz).to(**like)).sum()
            + (pos * (g_pos * vs[..., None]).to(**like)).sum()
        )

    return make, loss, {"s": s, "z": z}


BACKENDS = [("torch", torch.float64), ("triton", torch.float32)]


@pytest.mark.parametrize("backend, dtype", BACKENDS, ids=[b for b, _ in BACKENDS])
def test_block_gradients_match_reference(backend, dtype):
    """One randomised ``TriangularSelfAttentionBlock`` (sequence attention with pair bias, both
    triangle multiplications and attentions, sequence <-> pair, MLPs), odd L, padding mask."""
    make, loss, leaves = _block_case()
    _check(_errors(make, loss, leaves, backend, dtype), dtype)


@pytest.mark.parametrize("backend, dtype", BACKENDS, ids=[b for b, _ in BACKENDS])
def test_trunk_gradients_match_reference(backend, dtype):
    """A one-block ``FoldingTrunk``, one pass: pair input (relative positions, recycling embeddings),
    the block, the structure module's inputs and the structure module itself."""
    make, loss, leaves = _trunk_case()
    _check(_errors(make, loss, leaves, backend, dtype), dtype)


def _esm2_case(seed: int = 5):
    """A randomised two-layer ESM-2 (head dim 16, rotary), a padded batch of two lengths (17 and 11)."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.full((2, 19), 1)  # <pad>
    for row, n in enumerate((17, 11)):
        tokens[row, 0], tokens[row, n + 1] = 0, 2  # <cls> ... <eos>
        tokens[row, 1 : n + 1] = torch.randint(4, 24, (n,), generator=gen)
    tokens[0, 5] = 32  # one <mask>: token dropout rescales the embeddings
    keep = tokens.ne(1)[..., None]
    g_logits = torch.randn(2, 19, 33, generator=gen, dtype=torch.float64)

    def make():
        return randomize_(ESM2(num_layers=2, embed_dim=48, attention_heads=3), seed=seed + 1).eval()

    def loss(model):
        logits = model(tokens.to(model.embed_tokens.weight.device))["logits"]
        like = dict(device=logits.device, dtype=logits.dtype)
        return (logits * (g_logits * keep).to(**like)).sum()

    return make, loss, {}


@pytest.mark.parametrize("backend, dtype", BACKENDS, ids=[b for b, _ in BACKENDS])
def test_esm2_gradients_match_reference(backend, dtype):
    """ESM-2 fine-tuning through the backend's LayerNorm (fused residual adds) and rotary attention."""
    make, loss, leaves = _esm2_case()
    _check(_errors(make, loss, leaves, backend, dtype), dtype)
