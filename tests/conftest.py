"""Session fixtures shared across test folders (the real pretrained model is converted once)."""
from __future__ import annotations

import os

import pytest
import torch

# Without CUDA, Triton kernels run in the interpreter. The flag must be set before anything imports
# triton: triton.language's own functions (tl.max, ...) are made interpreted or compiled at that import,
# and test modules collected before tests/kernels (TRL, Liger through transformers) import it. Inherited
# by the processes the tensor-parallel tests spawn.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def smollm2_gguf():
    from tests.smollm2 import gguf_or_skip

    return gguf_or_skip()


@pytest.fixture(scope="session")
def smollm2_converted(smollm2_gguf, tmp_path_factory):
    """SmolLM2-135M-Instruct as a megatron checkpoint folder, written by `r1hpc convert hf-to-megatron`."""
    from tests.smollm2 import convert

    return convert(smollm2_gguf, tmp_path_factory.mktemp("smollm2") / "converted")
