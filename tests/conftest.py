"""Test-wide setup: kernels run through Triton's interpreter when there is no GPU."""

import os

import torch

if not torch.cuda.is_available():
    # Must be set before fastfold_kernels is imported: triton.jit reads it at decoration time.
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
