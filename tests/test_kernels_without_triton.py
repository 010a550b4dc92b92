"""fastfold_kernels without triton (macOS/Windows have no triton wheels): every op module imports, the
``_reference`` and ``_torch`` implementations give what they give with triton, and the Triton ops and
``check_triton_device`` fail with one clear line.

The child process hides triton with a ``sys.meta_path`` finder before anything imports it, runs
:func:`compute` there and sends the results back; this process runs :func:`compute` too, with triton.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from _util import HIDE_TRITON

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
OPS = ("layer_norm", "rotary_attention", "triangle_attention", "triangle_multiplicative_update")

_CHILD = textwrap.dedent(
    """
    sys.path[:0] = [{root!r}, {tests!r}]
    import torch
    torch.set_num_threads({threads})
    import test_kernels_without_triton as t
    t.child_main({out!r})
    """
)


def _inputs() -> dict:
    """Small random inputs of every op (odd sizes), the same in every process."""
    from fastfold_kernels.triangle_multiplicative_update import TriMulWeights

    gen = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    L, D = 9, 8
    inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    freqs = torch.outer(torch.arange(L, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    c_z, c_h, n = 16, 12, 7
    weights = TriMulWeights(
        1 + 0.2 * rand(c_z), 0.2 * rand(c_z),
        *(t for _ in range(4) for t in (rand(c_h, c_z) / c_z**0.5, 0.2 * rand(c_h))),
        1 + 0.2 * rand(c_h), 0.2 * rand(c_h), rand(c_z, c_h) / c_h**0.5, 0.2 * rand(c_z),
        rand(c_z, c_z) / c_z**0.5, 0.2 * rand(c_z),
    )  # fmt: skip
    return {
        "ln": (3 * rand(3, 5, 32), 1 + 0.3 * rand(32), 0.3 * rand(32), rand(3, 5, 32)),
        "rot": (*rand(2, L, 3, 2, D).unbind(2), emb.cos(), emb.sin(), torch.arange(L)[None, :] >= torch.tensor([[L], [5]])),
        "tri": (*rand(1, 3, n, 3, 2, D).unbind(3), rand(1, 2, n, n), rand(1, 3, n) > 0.3),
        "mul": (rand(1, n, n, c_z), (rand(1, n, n) > 0.2).float(), weights),
    }


def compute() -> dict[str, torch.Tensor]:
    """Every ``_reference`` and ``_torch`` implementation on :func:`_inputs`."""
    from fastfold_kernels import layer_norm as ln
    from fastfold_kernels import rotary_attention as ra
    from fastfold_kernels import triangle_attention as ta
    from fastfold_kernels import triangle_multiplicative_update as tm

    x = _inputs()
    out: dict[str, torch.Tensor] = {}
    for impl in ("reference", "torch"):
        lnf = getattr(ln, f"layer_norm_{impl}")
        out[f"ln_{impl}"] = lnf(*x["ln"][:3])
        out[f"ln_res_{impl}"], out[f"ln_sum_{impl}"] = lnf(*x["ln"][:3], residual=x["ln"][3])
        out[f"rot_{impl}"] = getattr(ra, f"rotary_attention_{impl}")(*x["rot"])
        out[f"tri_{impl}"] = getattr(ta, f"triangle_attention_{impl}")(*x["tri"], chunk_size=2)
        for outgoing in (True, False):
            z, mask, w = x["mul"]
            out[f"mul_{outgoing}_{impl}"] = getattr(tm, f"triangle_multiplicative_update_{impl}")(
                z, mask, w, outgoing, chunk_size=3
            )
    out["rot_reference_out"], out["rot_reference_probs"] = ra.rotary_attention_reference(*x["rot"], return_weights=True)
    z, mask, w = x["mul"]
    out["mul_add_into_z"] = tm.triangle_multiplicative_update_torch(z.clone(), mask, w, chunk_size=2, add_into_z=True)
    return out


def _triton_calls() -> dict:
    """Every way into a Triton kernel: the four ops and the device check."""
    import fastfold_kernels
    from fastfold_kernels import layer_norm as ln
    from fastfold_kernels import rotary_attention as ra
    from fastfold_kernels import triangle_attention as ta
    from fastfold_kernels import triangle_multiplicative_update as tm

    x = _inputs()
    return {
        "layer_norm": lambda: ln.layer_norm(*x["ln"][:3]),
        "rotary_attention": lambda: ra.rotary_attention(*x["rot"]),
        "triangle_attention": lambda: ta.triangle_attention(*x["tri"]),
        "triangle_multiplicative_update": lambda: tm.triangle_multiplicative_update(*x["mul"]),
        "check_triton_device_cpu": lambda: fastfold_kernels.check_triton_device("cpu"),
        "check_triton_device_cuda": lambda: fastfold_kernels.check_triton_device("cuda"),
    }


def child_main(out_path: str) -> None:
    """In the child: results, the errors the Triton entry points raise, and what was imported."""
    import importlib

    import fastfold_kernels
    from fastfold_kernels.utils import TRITON_MISSING, TritonUnavailableError

    for op in OPS:
        importlib.import_module(f"fastfold_kernels.{op}")
    from fastfold_kernels.triangle_multiplicative_update import TriMulWeights  # noqa: F401 (the trunk's import)

    errors = {}
    for name, call in _triton_calls().items():
        try:
            call()
        except Exception as err:  # noqa: BLE001 - the test inspects it
            errors[name] = [type(err).__name__, isinstance(err, RuntimeError), isinstance(err, TritonUnavailableError),
                            str(err)]
        else:
            errors[name] = None
    aot = {op: [c.name for c in importlib.import_module(f"fastfold_kernels.{op}").aot_configs()] for op in OPS}
    torch.save({
        "results": compute(),
        "errors": errors,
        "message": TRITON_MISSING,
        "have_triton": fastfold_kernels.HAVE_TRITON,
        "triton_imported": sorted(m for m in sys.modules if m == "triton" or m.startswith("triton.")),
        "aot": aot,
    }, out_path)  # fmt: skip


def test_kernels_import_and_run_without_triton(tmp_path):
    out = tmp_path / "child.pt"
    code = HIDE_TRITON + _CHILD.format(root=str(ROOT), tests=str(TESTS), threads=torch.get_num_threads(), out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    child = torch.load(out, weights_only=True)

    assert not child["have_triton"] and child["triton_imported"] == []

    # The torch and reference backends are the same code with or without triton: the same numbers.
    expected = compute()
    assert set(child["results"]) == set(expected)
    for name, value in expected.items():
        assert torch.equal(child["results"][name], value), name

    # Every Triton entry point: one RuntimeError, one line, saying what to do.
    message = child["message"]
    assert "\n" not in message and "pip install" in message and "backend='torch'" in message
    for name, err in child["errors"].items():
        assert err == ["TritonUnavailableError", True, True, message], (name, err)
    assert set(child["errors"]) == set(_triton_calls())

    # The ahead-of-time configs are listed the same way (the stand-ins' cdiv/next_power_of_2).
    import importlib

    for op in OPS:
        assert child["aot"][op] == [c.name for c in importlib.import_module(f"fastfold_kernels.{op}").aot_configs()], op
