"""Group-relative advantages: each prompt's G responses are scored against each other, no critic."""
from __future__ import annotations

from typing import Literal

from torch import Tensor

Estimator = Literal["grpo", "drgrpo", "rloo"]


def group_advantages(rewards: Tensor, estimator: Estimator = "grpo", eps: float = 1e-6) -> Tensor:
    """Advantages ``[N, G]`` for ``rewards [N, G]`` (N prompts, G responses each), in fp32.

    - ``"grpo"`` (DeepSeekMath / R1 eq. 3): ``(r - mean) / (std + eps)`` with the *unbiased*
      (Bessel-corrected, divide by G-1) standard deviation, as the R1 paper's reference code and
      TRL use; ``eps`` keeps all-equal groups at exactly 0 instead of 0/0.
    - ``"drgrpo"`` (Dr.GRPO): ``r - mean``; dividing by the std over-weights near-solved and
      near-failed prompts, so Dr.GRPO drops it.
    - ``"rloo"``: ``r_i - mean_{j != i} r_j`` (leave-one-out baseline, unbiased for the policy
      gradient); equals ``G / (G - 1) * (r - mean)``.

    Needs G >= 2 (one response has no group to compare with).
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [N, G], got shape {tuple(rewards.shape)}")
    g = rewards.shape[1]
    if g < 2:
        raise ValueError(f"group-relative advantages need G >= 2 responses per prompt, got {g}")
    # Shift by each group's first reward before averaging: an all-equal group then centres to
    # exactly 0 (fp32 r - mean(r) can leave ~1e-7, which a ~0 std would blow up to ~0.1).
    d = rewards.float() - rewards[:, :1].float()
    centred = d - d.mean(dim=1, keepdim=True)
    if estimator == "grpo":
        return centred / (d.std(dim=1, unbiased=True, keepdim=True) + eps)
    if estimator == "drgrpo":
        return centred
    if estimator == "rloo":
        return centred * (g / (g - 1))
    raise ValueError(f"unknown advantage estimator {estimator!r}; expected 'grpo', 'drgrpo' or 'rloo'")
