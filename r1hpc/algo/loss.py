"""GRPO loss: the config, the aggregation weights, the fp32 reference and the one public entry
point :func:`grpo_loss` that the trainer calls (dispatching to Triton or to chunked torch); all of
them take the scalar settings as one :class:`GRPOLossParams`."""
from __future__ import annotations

import dataclasses
from typing import Literal, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from r1hpc.algo.advantages import Estimator
from r1hpc.algo.kl import KLKind
from r1hpc.algo.logprobs import token_logp
from r1hpc.algo.objective import token_objective
from r1hpc.algo.params import GRPOLossParams, Impl, resolve_impl
from r1hpc.algo.vocab_parallel import logp_entropy
from r1hpc.config import ConfigError

AggMode = Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]


@dataclasses.dataclass
class AlgoConfig:
    """GRPO and its common variants. Defaults follow the R1 paper; DAPO sets eps_high=0.28,
    loss_agg_mode='token-mean', beta=0, dynamic_sampling and overlong shaping; Dr.GRPO sets
    advantage_estimator='drgrpo' and loss_agg_mode='seq-mean-token-sum-norm'."""

    advantage_estimator: Estimator = "grpo"
    adv_eps: float = 1e-6
    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip_c: Optional[float] = None
    beta: float = 0.001
    kl_kind: KLKind = "k3"
    kl_in_reward: bool = False
    loss_agg_mode: AggMode = "seq-mean-token-mean"
    entropy_coef: float = 0.0
    # of the trainer's log-probs; None: the sampler's (rollout.temperature), so that the trainer
    # scores the policy that sampled. Another value needs tis_cap to correct the gap.
    temperature: Optional[float] = None
    # importance sampling of the rollout policy's tokens (docs/algorithms.md section 7): per token or
    # per response (geometric mean of its token ratios), truncated at tis_cap and/or masked to 0
    # outside [mis_low, mis_high]; any of the three turns the old-policy pass on
    is_level: Literal["token", "sequence"] = "token"
    tis_cap: Optional[float] = None
    mis_low: Optional[float] = None
    mis_high: Optional[float] = None
    dynamic_sampling: bool = False
    max_response_len: int = 1024
    overlong_buffer_len: int = 0
    overlong_penalty: float = 1.0
    impl: Impl = "auto"
    # the trainer's forwards stop at the hidden states and the loss applies the output layer in tiles
    # (r1hpc.algo.fused_linear): no [tokens, V/TP] logits in the update or the log-prob passes;
    # impl picks its tile kernels (Triton or chunked torch), as for the loss on logits
    fused_output: bool = False

    def validate(self) -> None:
        checks = [
            (self.adv_eps > 0, "adv_eps must be > 0"),
            (0.0 <= self.eps_low < 1.0, "eps_low must be in [0, 1)"),
            (self.eps_high >= 0.0, "eps_high must be >= 0"),
            (self.dual_clip_c is None or self.dual_clip_c > 1.0, "dual_clip_c must be > 1 (or null)"),
            (self.beta >= 0.0, "beta must be >= 0"),
            (self.entropy_coef >= 0.0, "entropy_coef must be >= 0 (it is a bonus)"),
            (self.temperature is None or self.temperature > 0.0, "temperature must be > 0 (or null)"),
            (self.tis_cap is None or self.tis_cap > 0.0, "tis_cap must be > 0 (or null)"),
            (self.is_level in ("token", "sequence"), f"is_level must be token or sequence, not {self.is_level!r}"),
            (self.mis_low is None or 0.0 <= self.mis_low <= 1.0, "mis_low must be in [0, 1] (or null)"),
            (self.mis_high is None or self.mis_high >= 1.0, "mis_high must be >= 1 (or null)"),
            (self.mis_low is None or self.tis_cap is not None or self.mis_high is not None,
             "mis_low alone leaves the importance weights unbounded above: set algo.mis_high or algo.tis_cap"),
            (self.is_level == "token" or self.corrects_rollout,
             "is_level: sequence has nothing to apply to: set algo.tis_cap or algo.mis_low / algo.mis_high"),
            (self.max_response_len > 0, "max_response_len must be > 0"),
            (0 <= self.overlong_buffer_len < self.max_response_len,
             "overlong_buffer_len must be in [0, max_response_len)"),
            (self.overlong_penalty >= 0.0, "overlong_penalty must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    @property
    def corrects_rollout(self) -> bool:
        """Whether the update weights tokens by rollout importance ratios (truncated and/or masked)."""
        return self.tis_cap is not None or self.mis_low is not None or self.mis_high is not None

    def with_sampling_temperature(self, rollout_temperature: float) -> "AlgoConfig":
        """This config with ``temperature`` resolved: an unset one follows the sampler (a greedy
        sampler, temperature 0, leaves the plain softmax)."""
        if self.temperature is not None:
            return self
        return dataclasses.replace(self, temperature=rollout_temperature if rollout_temperature > 0 else 1.0)

    def loss_params(self) -> GRPOLossParams:
        """The loss settings this config fixes. With ``kl_in_reward`` the KL already sits in the
        reward, so the loss gets beta = 0."""
        if self.temperature is None:
            raise ValueError("algo.temperature is unresolved: use with_sampling_temperature(rollout.temperature)")
        return GRPOLossParams(
            temperature=self.temperature,
            eps_low=self.eps_low,
            eps_high=self.eps_high,
            dual_clip_c=self.dual_clip_c,
            beta=0.0 if self.kl_in_reward else self.beta,
            kl_kind=self.kl_kind,
            entropy_coef=self.entropy_coef,
            impl=self.impl,
        )


def aggregation_weights(
    mask: Tensor,
    mode: AggMode,
    max_len: Optional[int] = None,
    *,
    num_tokens: Optional[float] = None,
    num_seqs: Optional[float] = None,
) -> Tensor:
    """fp32 weights ``[B, L]`` such that the batch loss is ``(per_token_loss * weights).sum()``.

    - ``seq-mean-token-mean`` (R1 eq. 1): mean over each response's tokens, then over responses.
    - ``token-mean`` (DAPO): sum over all tokens / number of tokens, so long responses are not
      down-weighted.
    - ``seq-mean-token-sum-norm`` (Dr.GRPO): sum over tokens / ``max_len`` (default L), then mean
      over responses: a constant normaliser removes the length bias.

    When one optimizer step spans several micro-batches or data-parallel ranks, pass the step's
    global ``num_tokens`` / ``num_seqs`` so the per-micro-batch sums add up to the global mean.
    """
    m = mask.float()
    seqs = float(m.shape[0]) if num_seqs is None else float(num_seqs)
    if mode == "seq-mean-token-mean":
        return m / (m.sum(dim=1, keepdim=True).clamp(min=1.0) * seqs)
    if mode == "token-mean":
        tokens = m.sum().clamp(min=1.0) if num_tokens is None else float(num_tokens)
        return m / tokens
    if mode == "seq-mean-token-sum-norm":
        return m / (float(max_len if max_len is not None else m.shape[1]) * seqs)
    raise ValueError(f"unknown loss_agg_mode {mode!r}")


def grpo_token_loss_reference(
    logits: Tensor,
    target: Tensor,
    old_logp: Tensor,
    ref_logp: Optional[Tensor],
    advantages: Tensor,
    params: GRPOLossParams = GRPOLossParams(),
    *,
    tis_weight: Optional[Tensor] = None,
    active: Optional[Tensor] = None,
) -> dict[str, Tensor]:
    """The fp32 reference every implementation is tested against: the plain full-vocabulary
    ``log_softmax`` of ``logits [T, V]`` upcast to fp32, autograd for gradients (``params.impl``
    is not read). Returns per-token ``loss, logp, entropy, kl, ratio, is_clipped_low/high/dual``
    (all [T])."""
    z = logits.float() / params.temperature
    logprobs = torch.log_softmax(z, dim=-1)
    logp = logprobs.gather(1, target.long()[:, None]).squeeze(1)
    entropy = -(logprobs.exp() * logprobs).sum(dim=-1)
    if active is None:
        active = torch.ones_like(logp, dtype=torch.bool)
    return token_objective(logp, entropy, old_logp, advantages, active, params, ref_logp=ref_logp,
                           tis_weight=tis_weight)


def loss_metrics(tok: dict[str, Tensor], active: Tensor) -> dict[str, Tensor]:
    """Detached metrics: per-token logp/entropy/kl/ratio (0 where weight is 0) and scalars over
    the tokens with weight != 0, as 0-d tensors (no host sync)."""
    n = active.sum().clamp(min=1).float()
    per_token = {k: torch.where(active, tok[k].detach(), 0.0) for k in ("logp", "entropy", "kl", "ratio")}

    def mean(x: Tensor) -> Tensor:
        return (x.float() * active).sum() / n

    ratio = tok["ratio"].detach()
    big = torch.finfo(torch.float32).max
    return {
        **per_token,
        "clipfrac_low": mean(tok["is_clipped_low"]),
        "clipfrac_high": mean(tok["is_clipped_high"]),
        "clipfrac_dual": mean(tok["is_clipped_dual"]),
        "ratio_mean": mean(ratio),
        "ratio_max": torch.where(active, ratio, -big).max() if ratio.numel() else ratio.sum(),
        "ratio_min": torch.where(active, ratio, big).min() if ratio.numel() else ratio.sum(),
        "entropy_mean": mean(per_token["entropy"]),
        "kl_mean": mean(per_token["kl"]),
    }


def grpo_loss(
    logits: Tensor,
    target: Tensor,
    old_logp: Optional[Tensor],
    advantages: Tensor,
    weights: Tensor,
    params: GRPOLossParams = GRPOLossParams(),
    *,
    ref_logp: Optional[Tensor] = None,
    tis_weight: Optional[Tensor] = None,
    tp_group: Optional[dist.ProcessGroup] = None,
    vocab_start_index: int = 0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Scalar ``sum_t weights_t * loss_t`` with autograd to ``logits``, and detached metrics.

    ``logits [T, V_local]`` (bf16/fp16/fp32; this rank's vocab shard starting at
    ``vocab_start_index`` when ``tp_group`` has > 1 rank), ``target [T]`` global token ids,
    ``old_logp, advantages, weights [T]`` (weights from :func:`aggregation_weights`, flattened:
    mask and aggregation in one; weight-0 tokens are skipped and get zero gradient),
    ``params`` the scalar settings (``AlgoConfig.loss_params()`` in the trainer), ``old_logp`` None
    for on-policy (:func:`r1hpc.algo.objective.token_objective`),
    ``ref_logp [T]`` (needed for the KL term and metric), ``tis_weight [T]`` (truncated IS).
    The gradient is returned in the logits dtype; no fp32 [T, V] tensor is built on either path.
    With ``tp_group`` every rank must pass the same per-token inputs and gets the same (full)
    loss back: backpropagate it on every rank, do not sum it over the group.
    """
    active = weights != 0
    if resolve_impl(params.impl, logits) == "triton":
        from r1hpc.triton_kernels.grpo_loss import triton_grpo_loss

        if old_logp is None:  # the kernel takes old log-probs: on-policy, the current ones (one more read)
            old_logp, _ = token_logp(logits, target, active, temperature=params.temperature, tp_group=tp_group,
                                     vocab_start_index=vocab_start_index, impl="triton")
        loss, tok = triton_grpo_loss(
            logits, target, old_logp, advantages, weights, params, ref_logp=ref_logp, tis_weight=tis_weight,
            tp_group=tp_group, vocab_start_index=vocab_start_index,
        )
    else:
        logp, entropy = logp_entropy(
            logits, target, active, temperature=params.temperature,
            vocab_start_index=vocab_start_index, tp_group=tp_group,
        )
        tok = token_objective(logp, entropy, old_logp, advantages, active, params, ref_logp=ref_logp,
                              tis_weight=tis_weight)
        loss = (tok["loss"] * weights.float()).sum()
    return loss, loss_metrics(tok, active)
