"""The per-token GRPO objective given per-token log-probs and entropies (everything after the
vocabulary reduction). Shared by the fp32 reference and the chunked torch path; the Triton kernel
implements the same formulas and is tested against this.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from r1hpc.algo.kl import kl_penalty
from r1hpc.algo.params import GRPOLossParams

#: exp(logp - old_logp) is taken on a log-ratio clamped to +-20 (as verl does), so a stale or
#: corrupt old_logp cannot overflow the ratio; the clamp only bites far outside any clip range.
LOG_RATIO_CLAMP = 20.0


def _clipped_surrogate(ratio: Tensor, adv: Tensor, active: Tensor,
                       params: GRPOLossParams) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``pg = max(-A r, -A clip(r, 1-eps_low, 1+eps_high))``, the PPO/GRPO clipped surrogate (negated:
    a loss), capped at ``-c A`` for A < 0 with ``dual_clip_c`` (dual-clip PPO), so a huge ratio on a
    bad token cannot blow the loss up; and the low/high/dual clip flags."""
    eps_low, eps_high = params.eps_low, params.eps_high
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    pg = torch.maximum(unclipped, clipped)
    is_clipped_high = active & (adv > 0) & (ratio > 1.0 + eps_high)
    is_clipped_low = active & (adv < 0) & (ratio < 1.0 - eps_low)
    is_clipped_dual = torch.zeros_like(active)
    if params.dual_clip_c is not None:
        cap = -adv * params.dual_clip_c
        is_clipped_dual = active & (adv < 0) & (pg > cap)
        pg = torch.where(is_clipped_dual, cap, pg)
    return pg, is_clipped_low, is_clipped_high, is_clipped_dual


def token_objective(
    logp: Tensor,
    entropy: Tensor,
    old_logp: Optional[Tensor],
    advantages: Tensor,
    active: Tensor,
    params: GRPOLossParams = GRPOLossParams(),
    *,
    ref_logp: Optional[Tensor] = None,
    tis_weight: Optional[Tensor] = None,
) -> dict[str, Tensor]:
    """Per-token loss ``tis * pg + beta * kl - entropy_coef * entropy`` and its parts, in fp32, with
    ``pg`` from :func:`_clipped_surrogate` (``params.temperature`` and ``impl`` act before: on the
    logits). Tokens where ``active`` is False get loss 0 and no gradient whatever their inputs hold
    (padding may carry garbage log-probs). Differentiable in ``logp`` and ``entropy``.
    ``old_logp`` None: on-policy (one update per rollout), the old policy is the current one, so
    ``old_logp`` is ``logp`` detached: the ratio is exactly 1 and no separate log-prob pass is needed.
    """
    f32 = torch.float32
    logp, entropy = logp.to(f32), entropy.to(f32)
    adv = advantages.to(f32)
    old_logp = logp.detach() if old_logp is None else old_logp.to(f32)
    log_ratio = torch.clamp(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    log_ratio = torch.where(active, log_ratio, torch.zeros_like(log_ratio))
    ratio = torch.exp(log_ratio)
    pg, is_clipped_low, is_clipped_high, is_clipped_dual = _clipped_surrogate(ratio, adv, active, params)
    if tis_weight is not None:
        pg = pg * tis_weight.to(f32)
    loss = pg
    kl = torch.zeros_like(logp)
    if ref_logp is not None:
        kl = torch.where(active, kl_penalty(logp, ref_logp.to(f32), params.kl_kind), kl)
        if params.beta != 0.0:
            loss = loss + params.beta * kl
    if params.entropy_coef != 0.0:
        loss = loss - params.entropy_coef * entropy
    zero = torch.zeros_like(loss)
    return {
        "loss": torch.where(active, loss, zero),
        "logp": logp,
        "entropy": entropy,
        "kl": kl,
        "ratio": ratio,
        "is_clipped_low": is_clipped_low,
        "is_clipped_high": is_clipped_high,
        "is_clipped_dual": is_clipped_dual,
    }
