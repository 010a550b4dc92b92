"""esmfold_fast on a machine without triton (no wheels for macOS/Windows): it imports, loads a checkpoint and folds
on the CPU exactly as with triton, and ``backend="triton"`` is refused with one line saying how to get it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from _esmfold_hf import REDUCED_TRUNK, hf_folding_model, save_hf
from _util import HIDE_TRITON
from esmfold_fast import ESMFold

ROOT = Path(__file__).resolve().parents[1]
SEQ = "MKTAYIAKQRQISFVKSHF"

_CHILD = textwrap.dedent(
    """
    import json
    sys.path.insert(0, {root!r})
    import torch
    torch.set_num_threads({threads})
    import esmfold_fast
    from esmfold_fast import ESMFold

    model = ESMFold.from_pretrained({ckpt!r})  # backend "auto": torch on the CPU
    out = model.infer({seq!r}, num_recycles=0)
    torch.save({{"positions": out["positions"], "plddt": out["plddt"], "backend": model.backend.name}}, {out!r})
    refusals = []
    for make in (lambda: ESMFold.from_pretrained({ckpt!r}, backend="triton"), lambda: model.set_backend("triton")):
        try:
            make()
        except Exception as err:
            refusals.append([type(err).__name__, isinstance(err, RuntimeError), str(err)])
        else:
            refusals.append(None)
    triton_modules = sorted(m for m in sys.modules if m == "triton" or m.startswith("triton."))
    print(json.dumps({{"refusals": refusals, "triton_modules": triton_modules}}))
    """
)


def test_loads_and_folds_without_triton_and_refuses_the_triton_backend(tmp_path):
    ckpt = save_hf(hf_folding_model(REDUCED_TRUNK, seed=5), tmp_path / "ckpt")
    out = tmp_path / "child.pt"
    code = HIDE_TRITON + _CHILD.format(root=str(ROOT), threads=torch.get_num_threads(), ckpt=str(ckpt), seq=SEQ, out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["triton_modules"] == []
    for refusal in report["refusals"]:
        assert refusal is not None, "backend='triton' was accepted without triton"
        name, is_runtime_error, message = refusal
        assert is_runtime_error and "\n" not in message
        assert "triton" in message and "pip install" in message, message

    child = torch.load(out, weights_only=True)
    assert child["backend"] == "torch"
    expected = ESMFold.from_pretrained(ckpt, backend="torch").infer(SEQ, num_recycles=0)
    assert torch.equal(child["positions"], expected["positions"])
    assert torch.equal(child["plddt"], expected["plddt"])
