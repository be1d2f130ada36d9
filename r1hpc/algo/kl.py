"""Per-token KL estimators between the policy and the frozen reference (Schulman's k1/k2/k3).

Each estimates KL(pi || pi_ref) from a token sampled from pi, with ``logr = ref_logp - logp``:
k1 = -logr (unbiased, high variance, can be negative), k2 = logr^2 / 2 (biased, low variance),
k3 = exp(logr) - logr - 1 (unbiased, always >= 0; the R1 paper's eq. 2).

The same values serve both placements: times ``beta`` inside the loss (R1, ``kl_in_reward=False``)
or summed over a response and subtracted from its reward (``kl_in_reward=True``, see
:func:`kl_penalized_rewards`).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

KLKind = Literal["k1", "k2", "k3"]

#: k3 exponentiates the log-ratio; clamping it to +-20 keeps exp() finite (e^20 ~ 5e8) for tokens
#: the reference finds far likelier than the policy. Beyond the clamp the gradient is zero, the
#: torch.clamp convention that the Triton kernel copies.
K3_LOG_RATIO_CLAMP = 20.0


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: KLKind = "k3") -> Tensor:
    """Per-token KL estimate (same shape as ``logp``), differentiable in ``logp``."""
    if kind == "k1":
        return logp - ref_logp
    if kind == "k2":
        return 0.5 * (logp - ref_logp) ** 2
    if kind == "k3":
        logr = torch.clamp(ref_logp - logp, -K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
        return torch.exp(logr) - logr - 1.0
    raise ValueError(f"unknown KL estimator {kind!r}; expected 'k1', 'k2' or 'k3'")


def kl_penalized_rewards(
    rewards: Tensor, logp: Tensor, ref_logp: Tensor, mask: Tensor, beta: float, kind: KLKind = "k3"
) -> Tensor:
    """``rewards [B] - beta * sum_t KL_t`` over each response's valid tokens (``mask [B, L]``).

    Used with ``kl_in_reward=True`` before advantages are computed; the KL is detached because it
    acts as a reward, not as a loss term.
    """
    kl = kl_penalty(logp.detach().float(), ref_logp.float(), kind)
    return rewards.float() - beta * (kl * mask.float()).sum(dim=1)
