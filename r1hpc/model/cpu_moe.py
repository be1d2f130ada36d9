"""MoE layers without autograd on a CPU: route, then each expert's tokens straight through its weights.

megatron's MoE layer moves tokens through a dispatcher (permute by expert, all-to-all, sort, unpermute)
and a ``SequentialMLP`` of per-expert MLP modules: hundreds of Python-level torch calls per layer. On a
CPU at decode sizes that bookkeeping, not the arithmetic, is the layer's time: in a 16-row decode step
of the main job's MoE (4 experts, top-2) the layer took 1.2 ms, its expert products 0.2 ms. Without
autograd and with every expert whole on this rank, :func:`local_moe_forward` computes the same thing
directly: megatron's own router (so routing replay records and replays as before), then per expert
its rows gathered, ``fc1``, the activation, the router's probability scaling the activation (where
megatron's ``per_token_scale`` applies it), ``fc2``, and the contributions added in expert order, in
the experts' dtype, as megatron's unpermute adds them: the output equals megatron's bit for bit
(``tests/model/test_cpu_moe.py``). Anything else (autograd, expert or expert-tensor parallelism, a
shared expert overlapped with the dispatch, latent projections, biases, clamped, fused or Transformer
Engine activations, capacity padding) goes through megatron's forward. Applied by
:func:`r1hpc.model.cpu_compat.apply` on CPU-only hosts.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

from r1hpc.model.cpu_linear import decode_matmul
from r1hpc.model.decided_once import decided_once


def runs_locally(layer: torch.nn.Module) -> bool:
    """Whether ``layer`` (a megatron ``MoELayer``) has the plain local form :func:`local_moe_forward` computes."""
    from megatron.core.transformer.moe.experts import SequentialMLP

    cfg, experts = layer.config, layer.experts
    if not isinstance(experts, SequentialMLP) or experts.num_local_experts != cfg.num_moe_experts:
        return False  # grouped experts, or expert parallelism
    fc1_rows = cfg.moe_ffn_hidden_size * (2 if cfg.gated_linear_unit else 1)
    whole = all(e.linear_fc1.weight.shape[0] == fc1_rows for e in experts.local_experts)  # expert TP = 1
    return (whole and not cfg.add_bias_linear and not cfg.bias_activation_fusion and not cfg.use_te_activation_func
            and cfg.activation_func_clamp_value is None and not cfg.moe_apply_probs_on_input
            and not cfg.moe_pad_expert_input_to_capacity and not cfg.moe_latent_size
            and not layer.shared_expert_overlap)


def local_moe_forward(forward: Callable) -> Callable:
    """Wrap ``MoELayer.forward``: without autograd, on a CPU, for a layer that :func:`runs_locally`,
    compute it directly; otherwise call megatron's."""

    @functools.wraps(forward)
    def wrapper(self, hidden_states, intermediate_tensors=None, padding_mask=None):
        if torch.is_grad_enabled() or intermediate_tensors is not None or hidden_states.device.type != "cpu":
            return forward(self, hidden_states, intermediate_tensors, padding_mask)
        if not decided_once(self, "_r1hpc_runs_locally", runs_locally):
            return forward(self, hidden_states, intermediate_tensors, padding_mask)
        if padding_mask is not None:  # [b, s] -> [s, b], as megatron's forward gives the router
            padding_mask = padding_mask.transpose(0, 1).bool()
        probs, routing_map = self.route(hidden_states, padding_mask)
        output = routed_experts(self, hidden_states.reshape(-1, hidden_states.shape[-1]), probs, routing_map)
        output = output.to(hidden_states.dtype).view(hidden_states.shape)
        if self.use_shared_expert:
            output = output + self.shared_experts(hidden_states)
        return output, None

    return wrapper


def routed_experts(layer: torch.nn.Module, tokens: torch.Tensor, probs: torch.Tensor, routing_map: torch.Tensor
                   ) -> torch.Tensor:
    """Sum over each token's experts of probability x expert(token), for ``tokens`` [n, h] and the
    router's dense ``probs`` and ``routing_map`` [n, experts]. Each routed (expert, token) pair's row and
    probability are gathered once for all experts, in megatron's permutation order (expert-major)."""
    cfg = layer.config
    output = torch.zeros_like(tokens)
    by_expert = routing_map.t()
    counts = by_expert.sum(1).tolist()
    rows = by_expert.nonzero()[:, 1]
    per_expert = zip(layer.experts.local_experts, rows.split(counts), tokens.index_select(0, rows).split(counts),
                     probs.t()[by_expert].unsqueeze(-1).split(counts))
    for expert, expert_rows, inputs, expert_probs in per_expert:
        if not len(expert_rows):
            continue
        hidden = decode_matmul(inputs, expert.linear_fc1.weight)
        if cfg.gated_linear_unit:
            gate, linear = torch.chunk(hidden, 2, dim=-1)
            hidden = cfg.activation_func(gate) * (linear + cfg.glu_linear_offset)
        else:
            hidden = cfg.activation_func(hidden)
        hidden = (hidden * expert_probs).to(tokens.dtype)
        output.index_add_(0, expert_rows, decode_matmul(hidden, expert.linear_fc2.weight))
    return output
