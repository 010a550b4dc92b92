"""Every checkpoint format esmfold-fast reads, in one place, with one error type (:class:`CheckpointError`).

| format | ESM-2 | ESMFold |
|---|---|---|
| transformers ``save_pretrained`` directory (safetensors or ``.bin``, sharded or not) | ``EsmModel``, ``EsmForMaskedLM`` | ``EsmForProteinFolding`` |
| fair-esm ``.pt`` | ``esm2_*.pt`` (+ ``*-contact-regression.pt``) | ``esmfold_3B_v1.pt`` (+ its ESM-2 ``.pt``) |
| hub name ``org/model`` | from the local Hugging Face cache | from the local Hugging Face cache |
| fair-esm name | from the torch hub cache | from the torch hub cache |

:mod:`.files` reads files safely and finds them in the caches; :mod:`.esm2` and :mod:`.esmfold` map
each layout's configs and keys onto this package's modules. Loading never downloads; only the explicit
``download_*`` functions of :mod:`.files` do (``download=True``, ``--download``).
"""

from .esm2 import load_esm2
from .esmfold import load_esmfold
from .files import CheckpointError, resolve_hf_snapshot, resolve_torch_hub_checkpoint

__all__ = ["CheckpointError", "load_esm2", "load_esmfold", "resolve_hf_snapshot", "resolve_torch_hub_checkpoint"]
