"""Forward-only per-token log-probs and entropies: old-policy and reference scoring, rollout
metrics. Same vocabulary reduction (and vocab-parallel merge) as the loss, without autograd."""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from r1hpc.algo.params import Impl, resolve_impl
from r1hpc.algo.vocab_parallel import combine_shard_stats, logp_entropy, stats_to_logp_entropy


@torch.no_grad()
def token_logp(
    logits: Tensor,
    target: Tensor,
    mask: Optional[Tensor] = None,
    *,
    temperature: float = 1.0,
    tp_group: Optional[dist.ProcessGroup] = None,
    vocab_start_index: int = 0,
    impl: Impl = "auto",
) -> tuple[Tensor, Tensor]:
    """fp32 ``(logp [T], entropy [T])`` of ``log_softmax(logits [T, V_local] / temperature)`` at
    ``target``; tokens where ``mask`` is False are skipped and reported as 0. One read of the logits
    on the Triton path; chunked over tokens on the torch path."""
    active = torch.ones_like(target, dtype=torch.bool) if mask is None else mask.bool()
    if resolve_impl(impl, logits) == "triton":
        from r1hpc.triton_kernels.grpo_loss import shard_stats

        stats = shard_stats(logits, target, active, temperature, vocab_start_index)
        logp, entropy, _, _ = stats_to_logp_entropy(combine_shard_stats(stats, tp_group))
    else:
        logp, entropy = logp_entropy(logits, target, active, temperature=temperature,
                                     vocab_start_index=vocab_start_index, tp_group=tp_group)
    return torch.where(active, logp, 0.0), torch.where(active, entropy, 0.0)
