"""Fused Triton kernels for ESMFold's hot paths, each beside its naive PyTorch reference.

One op per module: :mod:`.layer_norm`, :mod:`.rotary_attention`, :mod:`.triangle_attention`,
:mod:`.triangle_multiplicative_update`. Each exposes ``<op>`` (Triton), ``<op>_reference`` (naive
PyTorch, the oracle) and ``<op>_torch`` (fast PyTorch, used by the ``torch`` backend).

On a machine without CUDA the kernels run through Triton's interpreter: set ``TRITON_INTERPRET=1``
before this package is imported.
"""

from ._runtime import AOTConfig, check_triton_device, interpreting

__all__ = ["AOTConfig", "check_triton_device", "interpreting"]
