"""Token log-prob and entropy from (possibly vocab-sharded) logits without an fp32 [T, V] tensor.

Each rank reduces its vocabulary shard to four fp32 numbers per token,
``(m, s, q, x_t)`` = (max of z, sum exp(z - m), sum exp(z - m) * z, target logit or 0) with
``z = logits / temperature``; :func:`combine_shard_stats` merges them across the tensor-parallel
group with one all-gather of [TP, T, 4] (rescaling every shard to the global max, so it stays
stable), never a gather of logits. From the merged stats: ``lse = m + log s``,
``logp = x_t - lse`` and ``entropy = lse - q / s``. The Triton path uses the same merge.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable

#: Stats of a token whose weight is zero: skipped, but finite (lse = 0) so nothing downstream NaNs.
EMPTY_STATS = (0.0, 1.0, 0.0, 0.0)

#: Upper bound on the fp32 working set of one chunk of the torch path.
CHUNK_BYTES = 64 * 2**20


def tp_world_size(group: Optional[dist.ProcessGroup]) -> int:
    if group is None or not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


def combine_shard_stats(stats: Tensor, group: Optional[dist.ProcessGroup]) -> Tensor:
    """Merge per-shard ``[T, 4]`` stats (m, s, q, x_t) across ``group`` into global ones."""
    world = tp_world_size(group)
    if world == 1:
        return stats
    parts = [torch.empty_like(stats) for _ in range(world)]
    dist.all_gather(parts, stats.contiguous(), group=group)
    allstats = torch.stack(parts)  # [TP, T, 4]
    m = allstats[..., 0].amax(dim=0)
    scale = torch.exp(allstats[..., 0] - m)
    s = (allstats[..., 1] * scale).sum(dim=0)
    q = (allstats[..., 2] * scale).sum(dim=0)
    x_t = allstats[..., 3].sum(dim=0)  # only the rank owning the target contributes
    return torch.stack([m, s, q, x_t], dim=1)


def stats_to_logp_entropy(stats: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(logp, entropy, lse, mean_z) from merged stats; mean_z = E_p[z] is what backward needs."""
    m, s, q, x_t = stats.unbind(dim=1)
    lse = m + torch.log(s)
    mean_z = q / s
    return x_t - lse, lse - mean_z, lse, mean_z


def _chunks(active: Tensor, logits: Tensor) -> list[Tensor]:
    rows = torch.nonzero(active).squeeze(1)
    size = max(1, CHUNK_BYTES // (4 * max(1, logits.shape[1])))
    return list(rows.split(size))


def _local_target(target: Tensor, vocab_start: int, v_local: int) -> tuple[Tensor, Tensor]:
    local = target.long() - vocab_start
    owned = (local >= 0) & (local < v_local)
    return local.clamp(0, v_local - 1), owned


class _LogpEntropy(torch.autograd.Function):
    """Chunked over tokens: fp32 lives only one chunk at a time; backward recomputes softmax."""

    @staticmethod
    def forward(ctx, logits, target, active, temperature, vocab_start, group):
        v_local = logits.shape[1]
        local, owned = _local_target(target, vocab_start, v_local)
        stats = logits.new_tensor(EMPTY_STATS, dtype=torch.float32).repeat(logits.shape[0], 1)
        for rows in _chunks(active, logits):
            z = logits[rows].float() / temperature
            m = z.amax(dim=1, keepdim=True)
            e = torch.exp(z - m)
            x_t = z.gather(1, local[rows, None]).squeeze(1) * owned[rows]
            stats[rows] = torch.stack([m.squeeze(1), e.sum(1), (e * z).sum(1), x_t], dim=1)
        logp, entropy, lse, mean_z = stats_to_logp_entropy(combine_shard_stats(stats, group))
        ctx.save_for_backward(logits, local, owned, active, lse, mean_z)
        ctx.temperature = temperature
        return logp, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logp, grad_entropy):
        logits, local, owned, active, lse, mean_z = ctx.saved_tensors
        grad = torch.zeros_like(logits)
        for rows in _chunks(active, logits):
            z = logits[rows].float() / ctx.temperature
            p = torch.exp(z - lse[rows, None])
            g_lp, g_h = grad_logp[rows, None].float(), grad_entropy[rows, None].float()
            # d logp / dz = onehot - p ;  d entropy / dz = -p (z - E_p[z])
            g = -g_lp * p - g_h * p * (z - mean_z[rows, None])
            g.scatter_add_(1, local[rows, None], g_lp * owned[rows, None])
            grad[rows] = (g / ctx.temperature).to(logits.dtype)
        return grad, None, None, None, None, None


def logp_entropy(
    logits: Tensor,
    target: Tensor,
    active: Tensor,
    *,
    temperature: float = 1.0,
    vocab_start_index: int = 0,
    tp_group: Optional[dist.ProcessGroup] = None,
) -> tuple[Tensor, Tensor]:
    """fp32 ``(logp [T], entropy [T])`` of ``log_softmax(logits / temperature)``, vocab-parallel
    over ``tp_group``; tokens with ``active`` False are skipped (finite placeholder values, zero grad)."""
    return _LogpEntropy.apply(logits, target, active, float(temperature), int(vocab_start_index), tp_group)
