"""Save and load model weights with megatron's distributed checkpointing, across parallel layouts.

A checkpoint written at one TP/PP/EP layout loads at another (megatron reshards through
``sharded_state_dict``), so a base model pretrained at TP=1 starts a GRPO run at TP=2, and the
reference policy is loaded from the same files as the policy.
"""
from __future__ import annotations

from pathlib import Path

import torch


def _chunks(model) -> list:
    return model if isinstance(model, (list, tuple)) else [model]


def _unwrap(module):
    while hasattr(module, "module"):
        module = module.module
    return module


def sharded_model_state(model) -> dict:
    chunks = [_unwrap(m) for m in _chunks(model)]
    if len(chunks) == 1:
        return chunks[0].sharded_state_dict(prefix="model.")
    return {k: v for i, m in enumerate(chunks) for k, v in m.sharded_state_dict(prefix=f"model{i}.").items()}


def save_model_weights(model, directory: str | Path) -> None:
    """Collective: every rank calls it; each writes its own shards."""
    from megatron.core import dist_checkpointing

    directory = Path(directory)
    if torch.distributed.get_rank() == 0:
        directory.mkdir(parents=True, exist_ok=True)
    torch.distributed.barrier()
    dist_checkpointing.save(sharded_model_state(model), str(directory))
    torch.distributed.barrier()


def load_model_weights(model, directory: str | Path, *, strict: bool = True) -> None:
    """Collective: fill ``model`` (any supported layout) from a checkpoint written by save_model_weights."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    directory = Path(directory)
    if not dist_checkpointing.check_is_distributed_checkpoint(str(directory)):
        raise FileNotFoundError(f"{directory}: not a megatron distributed checkpoint (no metadata.json)")
    state = dist_checkpointing.load(
        sharded_model_state(model), str(directory),
        strict=StrictHandling.RAISE_ALL if strict else StrictHandling.LOG_UNEXPECTED)
    chunks = [_unwrap(m) for m in _chunks(model)]
    if len(chunks) == 1:
        chunks[0].load_state_dict(_strip(state, "model."), strict=False)
    else:
        for i, m in enumerate(chunks):
            m.load_state_dict(_strip(state, f"model{i}."), strict=False)


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
