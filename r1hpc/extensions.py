"""Names of the compiled extensions setup.py builds from csrc/: the token sampler (CPU and CUDA) and
the CPU decode attention over a paged KV cache.

A leaf, free of torch at import: ``r1hpc info`` probes them without importing what uses them;
:mod:`r1hpc.rollout.native` and :mod:`r1hpc.model.paged_attention` load them with
:func:`import_extension`."""
from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Optional

CUDA_EXTENSION = "r1hpc._C"
CPU_SAMPLING_EXTENSION = "r1hpc._cpu_sampling"
CPU_ATTENTION_EXTENSION = "r1hpc._cpu_attention"


@functools.cache
def import_extension(name: str) -> tuple[Optional[ModuleType], str]:
    """(the module, "") or (None, why not): setup.py builds each extension only where it can."""
    try:
        return importlib.import_module(name), ""
    except ImportError as e:
        return None, f"{name} is not built here ({e})"
