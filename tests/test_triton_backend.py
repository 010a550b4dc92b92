"""End to end: a tiny randomised ESMFold under ``backend="triton"`` against ``backend="reference"``.

On CPU the kernels run through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), on CUDA
for real. Every kernel launch is counted, so a hot path that silently fell back to PyTorch fails here.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from _util import randomize_
from esmfold_fast import ESMFold

OPS = ("layer_norm", "rotary_attention", "triangle_attention", "triangle_multiplicative_update")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SEQUENCES = ["MKTAYIAKQRQISFVKSHFSRQLE", "GSHMLEDPVKAW"]  # a padded batch of two lengths


def _launched_kernels(op: str) -> set:
    """The @triton.jit kernels an op launches (its ahead-of-time configurations name them)."""
    module = importlib.import_module(f"fastfold_kernels.{op}")
    return {cfg.fn for cfg in module.aot_configs()}


@pytest.fixture
def launch_counts(monkeypatch):
    """Count launches per op by wrapping ``run`` on each kernel object (``kernel[grid](...)`` calls it)."""
    counts = dict.fromkeys(OPS, 0)
    for op in OPS:
        for kernel in _launched_kernels(op):
            original = kernel.run

            def counted(*args, _op=op, _run=original, **kwargs):
                counts[_op] += 1
                return _run(*args, **kwargs)

            monkeypatch.setattr(kernel, "run", counted)
    return counts


def _tiny_pair(seed: int):
    ref = ESMFold.from_config("tiny", backend="reference", device=DEVICE, seed=seed)
    randomize_(ref, seed=seed)  # every parameter, zero-initialised ones included
    tri = ESMFold.from_config("tiny", backend="triton", device=DEVICE, seed=seed)
    tri.load_state_dict(ref.state_dict())
    return ref, tri


def test_triton_backend_matches_reference_and_launches_every_kernel(launch_counts):
    ref, tri = _tiny_pair(seed=11)
    with torch.no_grad():
        expected = ref.infer(SEQUENCES, num_recycles=1)
        assert all(n == 0 for n in launch_counts.values())
        got = tri.infer(SEQUENCES, num_recycles=1)

    for op in OPS:
        assert launch_counts[op] > 0, f"backend='triton' never launched the {op} kernels"

    valid = expected["atom37_atom_exists"].bool()
    pos_ref = expected["positions"][-1]
    assert pos_ref.abs().mean() > 1.0  # not a degenerate structure
    residue = expected["atom14_atom_exists"].bool()
    assert (got["positions"][-1] - pos_ref)[residue].abs().max().item() < 5e-4
    assert (got["plddt"] - expected["plddt"])[valid].abs().max().item() < 2e-3
    lengths = [len(s) for s in SEQUENCES]
    for b, n in enumerate(lengths):
        assert torch.allclose(got["s_z"][b, :n, :n], expected["s_z"][b, :n, :n], rtol=1e-4, atol=1e-4)
        assert torch.allclose(got["s_s"][b, :n], expected["s_s"][b, :n], rtol=1e-4, atol=1e-4)
    assert torch.allclose(got["ptm"], expected["ptm"], atol=1e-5)


def test_triton_backend_differs_from_a_broken_model():
    """The comparison above can fail: perturbing one trunk weight moves the pair state far beyond the bounds used above."""
    ref, tri = _tiny_pair(seed=12)
    with torch.no_grad():
        tri.trunk.blocks[0].tri_mul_out.linear_z.weight.mul_(1.05)
        expected = ref.infer(SEQUENCES[:1], num_recycles=0)
        got = tri.infer(SEQUENCES[:1], num_recycles=0)
    n = len(SEQUENCES[0])
    assert not torch.allclose(got["s_z"][0, :n, :n], expected["s_z"][0, :n, :n], rtol=1e-2, atol=1e-2)
