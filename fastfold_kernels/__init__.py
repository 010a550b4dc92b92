"""Fused Triton kernels for ESMFold's hot paths, each beside its naive PyTorch reference.

One op per module: :mod:`.layer_norm`, :mod:`.rotary_attention`, :mod:`.triangle_attention`,
:mod:`.triangle_multiplicative_update`. Each exposes ``<op>`` (Triton), ``<op>_reference`` (naive
PyTorch, the oracle), ``<op>_torch`` (fast PyTorch, used by the ``torch`` backend) and
``aot_configs`` (its kernel launches, for ahead-of-time compilation). What they share lives in
:mod:`.utils`.

Triton is optional (it has wheels for Linux only): without it every module still imports and the
``_reference``/``_torch`` implementations work, while a Triton op, or :func:`check_triton_device`,
raises :class:`TritonUnavailableError`. :data:`HAVE_TRITON` says which holds.

On a machine without CUDA the kernels run through Triton's interpreter: set ``TRITON_INTERPRET=1``
before this package is imported.
"""

from .utils import HAVE_TRITON, AOTConfig, TritonUnavailableError, check_triton_device, interpreting

__all__ = ["HAVE_TRITON", "AOTConfig", "TritonUnavailableError", "check_triton_device", "interpreting"]
