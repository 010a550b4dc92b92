"""esmfold-fast: a fast, exact re-implementation of ESMFold (ESM-2 + folding trunk + structure module).

    from esmfold_fast import ESMFold
    model = ESMFold.from_pretrained("facebook/esmfold_v1")   # local HF cache, transformers dir or fair-esm .pt
    output = model.infer("MKTAYIAKQR:GSHMLEDP")              # fair-esm's output dict; pLDDT on 0-100
    pdb = model.infer_pdb("MKTAYIAKQR")
"""

from ._checkpoint import CheckpointError
from .alphabet import Alphabet
from .backend import get_backend
from .config import ESMFoldConfig, named_config
from .esm2 import ESM2
from .esmfold import ESMFold

__all__ = ["ESM2", "Alphabet", "ESMFold", "ESMFoldConfig", "named_config", "get_backend", "CheckpointError"]
