"""``rollout.offload_train_state``: on a GPU shared by training and generation, move the optimizer state
and the DDP grad buffers to host memory while a rollout runs (room for a larger KV pool), and back
after, with megatron's own ``offload_to_cpu``/``restore_from_cpu`` and
``offload_grad_buffers``/``restore_grad_buffers``. On a CPU there is no device memory to free: it
does nothing and says so once."""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch

from r1hpc.config import ConfigError

log = logging.getLogger(__name__)
CPU_NOTE = "rollout.offload_train_state: no GPU here, nothing to offload (the setting only acts on a GPU)"
_noted = False


@contextlib.contextmanager
def train_state_offloaded(engine, enabled: bool) -> Iterator[bool]:
    """Offload ``engine``'s optimizer state and grad buffers for the block when ``enabled`` and on a GPU;
    yields whether anything was offloaded. ``engine``: an :class:`r1hpc.train.engine.Engine` (or None)."""
    global _noted
    if not enabled or engine is None or engine.optimizer is None:
        yield False
        return
    if not torch.cuda.is_available():
        if not _noted:
            log.warning(CPU_NOTE)
            _noted = True
        yield False
        return
    if engine.model_cfg.params_dtype != "bf16":
        # with fp32 weights megatron's optimizer param groups are the model's own parameters:
        # offload_to_cpu would move the weights the rollout needs
        raise ConfigError("rollout.offload_train_state needs model.params_dtype=bf16 (fp32 optimizers hold the "
                          "model's own weights, which the rollout needs on the GPU)")
    engine.optimizer.offload_to_cpu()
    for chunk in engine.model:
        chunk.offload_grad_buffers()
    try:
        yield True
    finally:
        for chunk in engine.model:
            chunk.restore_grad_buffers()
        engine.optimizer.restore_from_cpu()
