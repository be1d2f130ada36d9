"""G responses per prompt: the rollout of one GRPO batch (or one shard of it), shared by the
colocated trainer and the disaggregated rollout workers so both sample exactly alike."""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from r1hpc.data.problem import Problem
from r1hpc.rollout.engines import generate_with
from r1hpc.rollout.generate import RolloutConfig, Sample
from r1hpc.rollout.offload import train_state_offloaded


def rollout_groups(module, tok, problems: Sequence[Problem], *, render: Callable[[str], str], rollout: RolloutConfig,
                   seed: int, step: int, shard: int, max_seq_length: int, train_state=None) -> list[Sample]:
    """``rollout.group_size`` samples of each problem, group after group. The sampler is seeded by
    (seed, step, shard, number of problems): data-parallel rank ``shard`` of a colocated run and
    shard ``shard`` of a disaggregated step draw the same responses from the same weights.
    ``train_state``: the training Engine, whose optimizer state and grad buffers leave the GPU while
    the rollout runs when ``rollout.offload_train_state`` is set."""
    G = rollout.group_size
    prompts = [tok.encode(render(p.question)) for p in problems for _ in range(G)]
    gen = torch.Generator().manual_seed(hash((seed, step, shard, len(problems))) % 2**62)
    with train_state_offloaded(train_state, rollout.offload_train_state):
        return generate_with(rollout.engine, module, prompts, kv_cache_gb=rollout.kv_cache_gb,
                             kv_block_tokens=rollout.kv_block_tokens, vocab_size=tok.vocab_size,
                             stop_ids=tok.stop_token_ids, temperature=rollout.temperature, top_p=rollout.top_p,
                             top_k=rollout.top_k, max_new_tokens=rollout.max_new_tokens,
                             max_seq_length=max_seq_length, generator=gen, max_batch_rows=rollout.max_batch_rows,
                             sampler=rollout.sampler)
