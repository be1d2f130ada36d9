"""How far the trainer's policy is from the one that sampled: rollout log-probs against the trainer's
recompute of the same tokens (its old-policy log-probs), every step.

The rollout engine and the trainer run different kernels (a KV-cached decode against a full
forward), batch shapes and, for a MoE, possibly different experts for a token; the figures say
how large that gap is, and for a MoE whether routing replay closes it (docs/algorithms.md,
section 7). Names follow TRL (``sampling/...``) and verl (``rollout_corr/...``) where they exist.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from r1hpc.monitor.reduce import StepMetrics

# a token is "far off" when its trainer/rollout ratio leaves [1/BAND, BAND]
BAND = 2.0


def mismatch_sums(rollout_logp: Tensor, trainer_logp: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(sums, maximum) over the response tokens (``mask`` [B, L]) of rows [B, L]: ``sums`` is fp64
    [5] = (sum |log p_rollout - log p_trainer|, tokens, sum over sequences of the sequence's
    sum of (log p_rollout - log p_trainer), sequences, tokens with ratio outside [1/2, 2]) and
    ``maximum`` the largest |difference| (0 without tokens). Sums so data-parallel ranks can add them."""
    m = mask.bool()
    diff = (rollout_logp.double() - trainer_logp.double()) * m
    absdiff = diff.abs()
    far = (absdiff > math.log(BAND)) & m
    seqs = m.any(dim=1)
    sums = torch.stack([absdiff.sum(), m.sum().double(), diff.sum(dim=1)[seqs].sum(), seqs.sum().double(),
                        far.sum().double()])
    return sums, absdiff.max() if absdiff.numel() else torch.zeros((), dtype=torch.float64, device=absdiff.device)


def add_mismatch_metrics(metrics: StepMetrics, rollout_logp: Tensor, trainer_logp: Tensor, mask: Tensor) -> None:
    """Declares the step's mismatch figures in ``metrics`` (global once it reduces over the DP ranks):

    - ``sampling/sampling_logp_difference/mean`` and ``/max`` (TRL): |log p_rollout - log p_trainer|
      per response token;
    - ``rollout_corr/seq_kl``: mean over sequences of sum_t (log p_rollout - log p_trainer), the
      sampled (k1) estimate of KL(pi_rollout || pi_trainer) of whole responses (tokens were drawn
      from the rollout policy);
    - ``rollout_corr/ratio_out_of_band_frac``: share of tokens whose ratio p_trainer / p_rollout
      leaves [1/2, 2]."""
    sums, maximum = mismatch_sums(rollout_logp, trainer_logp, mask)
    absdiff, tokens, seq_kl, seqs, far = sums.tolist()
    metrics.mean_of("sampling/sampling_logp_difference/mean", absdiff, tokens)
    metrics.max("sampling/sampling_logp_difference/max", float(maximum))
    metrics.mean_of("rollout_corr/seq_kl", seq_kl, seqs)
    metrics.mean_of("rollout_corr/ratio_out_of_band_frac", far, tokens)


def mismatch_metrics(rollout_logp: Tensor, trainer_logp: Tensor, mask: Tensor, group=None) -> dict[str, float]:
    """The figures of :func:`add_mismatch_metrics` over every data-parallel rank of ``group`` (None: this rank alone)."""
    metrics = StepMetrics(group)
    add_mismatch_metrics(metrics, rollout_logp, trainer_logp, mask)
    return metrics.reduce()


def add_correction_metrics(metrics: StepMetrics, weights: Tensor, kept: Tensor, mask: Tensor,
                           cap: float | None) -> None:
    """Declares what the importance-sampling correction did to the step's response tokens:

    - ``rollout_corr/is_weight_mean``: mean weight over the tokens the band keeps;
    - ``rollout_corr/masked_frac``: share of response tokens masked out (weight 0) by ``algo.mis_low/high``;
    - ``rollout_corr/truncated_frac``: share of kept tokens whose weight sits at ``algo.tis_cap``."""
    m, k = mask.bool(), kept.bool() & mask.bool()
    tokens, kept_tokens = float(m.sum()), float(k.sum())
    metrics.mean_of("rollout_corr/is_weight_mean", float(weights.double()[k].sum()), kept_tokens)
    metrics.mean_of("rollout_corr/masked_frac", tokens - kept_tokens, tokens)
    truncated = float((k & (weights >= cap)).sum()) if cap is not None else 0.0
    metrics.mean_of("rollout_corr/truncated_frac", truncated, kept_tokens)
