"""Batch shaping around the loss: DAPO dynamic sampling, DAPO overlong reward shaping, and
truncated importance sampling for the rollout-engine vs trainer log-prob mismatch."""
from __future__ import annotations

import torch
from torch import Tensor

from r1hpc.algo.objective import LOG_RATIO_CLAMP


def informative_groups(rewards: Tensor) -> Tensor:
    """Indices (long [K]) of the groups in ``rewards [N, G]`` whose rewards are not all equal.

    DAPO's dynamic sampling: an all-equal group has zero advantage everywhere, so it only dilutes
    the batch; the trainer drops such groups and samples more until the batch is full."""
    return torch.nonzero((rewards != rewards[:, :1]).any(dim=1)).squeeze(1)


def overlong_penalty(lengths: Tensor, max_len: int, buffer_len: int, penalty: float = 1.0) -> Tensor:
    """DAPO soft overlong punishment (added to the reward), fp32 [B].

    0 up to ``max_len - buffer_len`` tokens, then falling linearly to ``-penalty`` at ``max_len``
    (and ``-penalty`` beyond, for truncated responses): a response is told it is getting too long
    before it is cut off, instead of a truncated-but-correct answer being rewarded like any other.
    ``buffer_len = 0`` disables it."""
    lengths = lengths.float()
    if buffer_len <= 0:
        return torch.zeros_like(lengths)
    start = max_len - buffer_len
    return -penalty * ((lengths - start) / buffer_len).clamp(0.0, 1.0)


def truncated_is_weights(trainer_logp: Tensor, rollout_logp: Tensor, cap: float) -> Tensor:
    """``min(exp(trainer_old_logp - rollout_logp), cap)`` per token, detached, fp32.

    The rollout engine (different kernels, precision, or a stale policy) samples from a slightly
    different distribution than the trainer scores; reweighting the policy-gradient term by this
    ratio corrects it, and the cap bounds the variance (truncated IS, as in verl/TIS)."""
    log_ratio = (trainer_logp.detach().float() - rollout_logp.float()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(log_ratio).clamp(max=cap)
