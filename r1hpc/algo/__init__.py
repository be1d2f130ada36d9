"""GRPO algorithm in pure PyTorch: advantages, KL estimators, the fp32 loss reference every kernel is
tested against, and :func:`grpo_loss`, the one loss entry point the trainer calls, with its settings
in one :class:`GRPOLossParams`."""
from r1hpc.algo.advantages import group_advantages
from r1hpc.algo.fused_linear import fused_linear_grpo_loss, fused_linear_logprobs
from r1hpc.algo.kl import kl_penalized_rewards, kl_penalty
from r1hpc.algo.logprobs import token_logp
from r1hpc.algo.loss import AlgoConfig, aggregation_weights, grpo_loss, grpo_token_loss_reference
from r1hpc.algo.params import GRPOLossParams
from r1hpc.algo.sampling_utils import informative_groups, overlong_penalty, rollout_is_weights

__all__ = [
    "AlgoConfig",
    "GRPOLossParams",
    "aggregation_weights",
    "fused_linear_grpo_loss",
    "fused_linear_logprobs",
    "group_advantages",
    "grpo_loss",
    "grpo_token_loss_reference",
    "informative_groups",
    "kl_penalized_rewards",
    "kl_penalty",
    "overlong_penalty",
    "rollout_is_weights",
    "token_logp",
]
