"""Without CUDA, Triton kernels run in the interpreter (numpy on CPU tensors); tests/conftest.py sets
TRITON_INTERPRET before any test module imports triton."""
import pytest
import torch


@pytest.fixture
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
