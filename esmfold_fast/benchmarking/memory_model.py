"""Peak memory of a fold at any length, computed on the meta device: no memory, no arithmetic.

The model runs on meta tensors (shapes only) with every Triton kernel launch skipped, while a dispatch mode
adds up the bytes of every tensor storage that is alive. What it reports is what this code allocates, op by
op, under the backend's real launch plan: the pair state, each chunk's temporaries, the kernels' buffers,
the structure module and the heads. Not counted: allocator fragmentation and caching, the CUDA context
(about 0.5 GB), kernels' registers and shared memory. One trunk block is run: the blocks update the pair
state in place under ``torch.no_grad()``, so 48 have the peak of one, and the weights of all of them are
added from the full-size model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..config import ESMFoldConfig, named_config, with_overrides
from .. import esmfold
from ..esmfold import STRUCTURE_KEYS, ESMFold
from .launches import counted_kernels, planned_backend, set_ops

GIB = 2**30


class LiveBytes(TorchDispatchMode):
    """Bytes of tensor storages alive now (``current``) and at most (``peak``) while the mode is on.
    Storages that existed before it started (weights, inputs) are not counted."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t.untyped_storage())
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = storage._cdata  # one id per storage, whatever view of it an op returned
        if key in self.sizes:
            return
        self.sizes[key] = storage.nbytes()
        self.current += self.sizes[key]
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, key)

    def _release(self, key: int) -> None:
        self.current -= self.sizes.pop(key)


def _param_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def _meta_model(config: ESMFoldConfig, backend: str, dtype: torch.dtype, lm_fp16: bool, free_bytes: int | None):
    """The model on the meta device in the layout a fold runs with; its trunk's padding check answers
    "no padding" (a meta tensor has no values to check)."""
    with torch.device("meta"):
        model = ESMFold(config)
    model.to(dtype)  # the pair track in dtype, float32 islands kept
    if lm_fp16:  # as on CUDA
        model.esm.half()
    set_ops(model, planned_backend(backend, free_bytes))
    model.trunk._padding_mask = lambda mask: None
    return model.eval()


def activation_peak(model: ESMFold, L: int, lean_outputs: bool = True) -> tuple[int, int]:
    """(peak, outputs): bytes the trunk (one pass) and the heads allocate at most for one unpadded
    sequence of length ``L``, and those the returned outputs hold, on the model's device (meta: shapes
    only), Triton launches skipped."""
    device = model.trunk.recycle_z_norm.weight.device
    aa = torch.zeros(1, L, dtype=torch.long, device=device)
    mask = torch.ones(1, L, dtype=torch.long, device=device)
    residx = torch.arange(L, device=device)[None]
    c_s, s_dtype = model.config.trunk.sequence_state_dim, model.esm_s_mlp[0].weight.dtype
    s_s_0 = torch.zeros(1, L, c_s, dtype=s_dtype, device=device)
    # pTM reads sequence lengths and its best anchor from values, which meta tensors lack; it allocates only
    # [L, L] scalars (29 MB at L = 2700) on top of the probabilities it is given, so it is left out.
    ptm_left_out = lambda logits, mask, probs: probs.new_empty(probs.shape[0])  # noqa: E731
    triton = model.trunk.ops.name == "triton"
    with torch.no_grad(), counted_kernels({"kernels": 0}) if triton else contextlib.nullcontext():
        with LiveBytes() as live, mock.patch.object(esmfold, "ptm_per_sequence", ptm_left_out):
            structure = model.trunk(s_s_0, None, aa, residx, mask, num_recycles=0)
            out = {k: structure[k] for k in STRUCTURE_KEYS}
            del structure
            out = model._heads(out, aa, mask, residx, return_pair_outputs=not lean_outputs)
            outputs = live.current
            del out
    return live.peak, outputs


def fold_peak(
    L: int,
    config: str | ESMFoldConfig = "esmfold_v1",
    backend: str = "triton",
    dtype: torch.dtype = torch.float32,
    lm_fp16: bool = True,
    free_bytes: int | None = 80 * GIB,
    lean_outputs: bool = True,
) -> dict[str, float]:
    """GiB of one fold of length ``L`` (one sequence, one trunk pass): ``weights``, ``activations`` (the
    peak of what the trunk and the heads allocate, plus the LM's stacked states), ``total``, ``outputs``
    (what the returned dict holds);
    ``pair_state`` (one [L, L, c_z] tensor) for scale. ``free_bytes``: the device's free memory the
    fused path plans chunks with; ``lean_outputs``: ``return_pair_outputs=False``, as the CLI runs."""
    config = named_config(config) if isinstance(config, str) else config
    weights = _param_bytes(_meta_model(config, backend, dtype, lm_fp16, free_bytes))
    one_block = with_overrides(dataclasses.replace(config, trunk=dataclasses.replace(config.trunk)), num_blocks=1)
    model = _meta_model(one_block, backend, dtype, lm_fp16, free_bytes)
    peak, outputs = activation_peak(model, L, lean_outputs)
    # The LM's activations are O(L d) and gone before the trunk starts, except the stacked per-layer
    # states esm_s_combine mixes: counted here, not run (the LM checks its padding on values).
    lm_dtype = model.esm.embed_tokens.weight.dtype
    lm_states = (config.esm.num_layers + 1) * L * config.esm.embed_dim * torch.empty((), dtype=lm_dtype).element_size()
    peak += lm_states
    pair_dtype = model.trunk.recycle_z_norm.weight.dtype
    pair = L * L * config.trunk.pairwise_state_dim * torch.empty((), dtype=pair_dtype).element_size()
    return {
        "weights": weights / GIB,
        "activations": peak / GIB,
        "total": (weights + peak) / GIB,
        "outputs": outputs / GIB,
        "pair_state": pair / GIB,
    }
