"""Batch shaping around the loss: DAPO dynamic sampling, DAPO overlong reward shaping, and
importance sampling (truncated and masked, token or sequence level) for the rollout-engine vs
trainer log-prob mismatch."""
from __future__ import annotations

from typing import Literal, Optional

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


def rollout_is_weights(
    trainer_logp: Tensor,
    rollout_logp: Tensor,
    mask: Tensor,
    *,
    level: Literal["token", "sequence"] = "token",
    cap: Optional[float] = None,
    low: Optional[float] = None,
    high: Optional[float] = None,
) -> tuple[Tensor, Tensor]:
    """(weights, kept), both [B, L] like ``mask``: importance weights of the rollout policy's tokens
    under the trainer's old policy, detached fp32, and which tokens the band keeps (bool).

    The ratio is ``exp(trainer_old_logp - rollout_logp)`` per token (``level='token'``) or, for
    ``level='sequence'``, the geometric mean of a response's token ratios, given to each of its
    tokens. Truncation (TIS, ``cap``): ``min(ratio, cap)``. Masking (MIS, ``low``/``high``): a token
    (or whole response) whose ratio leaves ``[low, high]`` gets weight 0 and ``kept`` False, so the
    trainer leaves it out of the loss and its normaliser. Both compose; weights outside ``mask`` are 0."""
    m = mask.bool()
    log_ratio = (trainer_logp.detach().float() - rollout_logp.float()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    log_ratio = log_ratio * m
    if level == "sequence":
        per_seq = log_ratio.sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp(min=1)
        log_ratio = per_seq.expand_as(log_ratio)
    elif level != "token":
        raise ValueError(f"unknown importance-sampling level {level!r} (token | sequence)")
    ratio = torch.exp(log_ratio)
    kept = m.clone()
    if low is not None:
        kept &= ratio >= low
    if high is not None:
        kept &= ratio <= high
    weights = ratio.clamp(max=cap) if cap is not None else ratio
    return weights * kept, kept
