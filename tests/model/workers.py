"""Rank functions for the multi-process layout tests (top level so spawn can import them)."""
from __future__ import annotations

import torch

from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
from r1hpc.model.config import ModelConfig
from r1hpc.model.weights import load_model_weights, save_model_weights
from r1hpc.train.engine import Engine, OptimConfig, last_stage_broadcast
from r1hpc.train.lm_loss import lm_forward_step, make_lm_batch

GLOBAL_BATCH, SEQ = 4, 16


def fixed_batch(vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    return torch.randint(0, vocab, (GLOBAL_BATCH, SEQ + 1), generator=g)


def train_losses(model_kw: dict, parallel_kw: dict, ckpt_dir: str, mode: str, steps: int = 3) -> dict:
    """Build the model at a layout, save (mode 'save') or load (mode 'load') its initial weights, then
    take ``steps`` Adam steps on a fixed global batch of one-sequence micro-batches. Returns the loss
    before each step (DP-averaged, shared by every rank) and a checksum of this rank's parameters."""
    from megatron.core import parallel_state

    model_cfg, parallel_cfg = ModelConfig(**model_kw), ParallelConfig(**parallel_kw)
    init_distributed(parallel_cfg, model_cfg, seed=7)
    engine = Engine(model_cfg, parallel_cfg, OptimConfig(lr=1e-3, clip_grad=1.0))
    (save_model_weights if mode == "save" else load_model_weights)(engine.module, ckpt_dir)
    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    seqs = fixed_batch(model_cfg.vocab_size)[dp_rank::dp]
    micro = [make_lm_batch(seqs[i:i + 1], vocab_size=model_cfg.vocab_size) for i in range(seqs.shape[0])]
    losses = []
    for _ in range(steps):
        out = engine.train_step(lm_forward_step, micro, seq_length=SEQ, micro_batch_size=1)
        local = [sum(float(o["lm_loss"]) for o in out["outputs"]) / len(micro)] if out["outputs"] else None
        loss = torch.tensor(last_stage_broadcast(local, 1), dtype=torch.float64)
        torch.distributed.all_reduce(loss, group=parallel_state.get_data_parallel_group())
        losses.append(float(loss) / dp)
    checksum = float(sum(p.detach().double().sum() for p in engine.module.parameters()))
    destroy_distributed()
    return {"losses": losses, "checksum": checksum, "dp_rank": dp_rank}
