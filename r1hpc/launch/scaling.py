"""One counted, timed training step on this rank: what the scaling benchmark (benchmarks/bench_scaling.py)
runs at 1, 2 and 4 ranks, and what the bytes-model test runs at 2."""
from __future__ import annotations

import time

import torch

from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
from r1hpc.launch.comm_model import CollectiveCounter
from r1hpc.model.config import ModelConfig
from r1hpc.train.engine import Engine, OptimConfig
from r1hpc.train.lm_loss import lm_forward_step, make_lm_batch


def counted_step(model_kw: dict, parallel_kw: dict, micro_batch: int, seq: int, num_micro: int,
                 steps: int = 2) -> dict:
    """One warm-up step, then ``steps`` counted and timed optimizer steps of next-token training."""
    from megatron.core import parallel_state

    model_cfg, parallel_cfg = ModelConfig(**model_kw), ParallelConfig(**parallel_kw)
    init_distributed(parallel_cfg, model_cfg, seed=7)
    engine = Engine(model_cfg, parallel_cfg, OptimConfig(lr=1e-3, clip_grad=1.0))
    g = torch.Generator().manual_seed(1234 + parallel_state.get_data_parallel_rank())
    micro = [make_lm_batch(torch.randint(0, model_cfg.vocab_size, (micro_batch, seq + 1), generator=g),
                           vocab_size=model_cfg.vocab_size)
             for _ in range(num_micro)]
    engine.train_step(lm_forward_step, micro, seq_length=seq, micro_batch_size=micro_batch)
    torch.distributed.barrier()
    t0 = time.perf_counter()
    with CollectiveCounter() as counter:
        for _ in range(steps):
            engine.train_step(lm_forward_step, micro, seq_length=seq, micro_batch_size=micro_batch)
    step_s = (time.perf_counter() - t0) / steps
    params = sum(p.numel() for p in engine.module.parameters())
    destroy_distributed()
    return {"bytes": {k: v // steps for k, v in counter.bytes.items()},
            "calls": {k: v // steps for k, v in counter.calls.items()}, "step_s": step_s, "params": params}
