"""esmfold-fast: a fast, exact re-implementation of ESMFold (ESM-2 + folding trunk + structure module).

    from esmfold_fast import ESMFold
    model = ESMFold.from_pretrained("facebook/esmfold_v1")   # local HF cache, transformers dir or fair-esm .pt
    output = model.infer("MKTAYIAKQR:GSHMLEDP")              # fair-esm's output dict; pLDDT on 0-100
    model = esmfold_fast.pretrained.esmfold_v1()             # fair-esm's entry points, from the local caches
    pdb = model.infer_pdb("MKTAYIAKQR")
"""

import importlib
from typing import Any

# Exported names and their modules, imported on first use so that `esmfold-fast --help` and the FASTA
# checks start without loading torch.
_EXPORTS = {
    "CheckpointError": ".checkpoints",
    "Alphabet": ".alphabet",
    "get_backend": ".backend",
    "ESMFoldConfig": ".config",
    "named_config": ".config",
    "ESM2": ".esm2",
    "ESMFold": ".esmfold",
    "accelerate": ".dropin",
    "restore": ".dropin",
}
# Submodules reachable as attributes: ``esmfold_fast.pretrained.esmfold_v1()``, as ``esm.pretrained``.
_SUBMODULES = ("pretrained",)
__all__ = [*_EXPORTS, *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name not in _EXPORTS:
        raise AttributeError(f"module 'esmfold_fast' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
