"""Without CUDA, Triton kernels run in the interpreter (numpy on CPU tensors). The flag must be in
the environment before a kernel is decorated, i.e. before r1hpc.triton_kernels.grpo_loss is
imported, and is inherited by the processes that the tensor-parallel tests spawn."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
