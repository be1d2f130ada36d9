"""Every random number generator a rank draws from, captured and restored together.

The trainer's own generators (rollout sampling, evaluation) are re-seeded from (seed, step, rank)
at each use, so the step counter restores them; these are the process-wide ones: python, numpy,
torch CPU (and CUDA when present) and megatron's named tensor-parallel RNG streams."""
from __future__ import annotations

import random

import numpy as np
import torch


def capture_rng() -> dict:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "megatron": {k: v.clone() for k, v in get_cuda_rng_tracker().get_states().items()}}


def restore_rng(state: dict) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    get_cuda_rng_tracker().set_states(state["megatron"])
