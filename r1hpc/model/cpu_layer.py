"""Transformer layers without autograd on a CPU: megatron's layer forward without its training machinery.

megatron's ``TransformerLayer.forward`` wraps the two residual blocks (norm, attention, add; norm, MLP,
add) in what training and GPUs need: activation-offload and recompute contexts, NVTX ranges, the
fused-TP-inference and cross-attention branches, a bias-dropout-add looked up per call, and a
"viewless" copy for checkpointing. On a CPU at decode sizes that Python is a measured share of the
step: about 190 us a layer on a 2-core Xeon (tiny-MoE rollout of 16 rows: 237 -> 212 ms), where the
layer's products take tens of microseconds. Without autograd, for a layer of the plain pre-norm form
r1hpc builds (its RMSNorm, no cross attention, no recompute or offload, no dropout in effect, no
packed sequences), :func:`plain_layer_forward` calls the same submodules and adds the residuals as
megatron's bias-dropout-add does (bias first, then the residual, in the output's dtype): the output is
megatron's bit for bit (``tests/model/test_cpu_layer.py``). Everything else calls megatron's forward. Applied by
:func:`r1hpc.model.cpu_compat.apply` on CPU-only hosts.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

from r1hpc.model.decided_once import decided_once
from r1hpc.model.norm import RMSNorm

#: Keyword arguments of ``TransformerLayer.forward`` that the self-attention takes as they are.
ATTENTION_KWARGS = ("attention_mask", "inference_context", "rotary_pos_emb", "rotary_pos_cos", "rotary_pos_sin",
                    "rotary_pos_cos_sin", "attention_bias", "packed_seq_params", "sequence_len_offset")
#: The ones the plain forward also understands (the rest send the call to megatron's forward).
_PLAIN_KWARGS = frozenset(ATTENTION_KWARGS + ("hidden_states", "context", "context_mask", "padding_mask"))


def is_plain(layer: torch.nn.Module) -> bool:
    """Whether ``layer`` (a megatron ``TransformerLayer``) has the form :func:`plain_layer_forward` computes."""
    from megatron.core.transformer.identity_op import IdentityOp
    from megatron.core.transformer.transformer_layer import TransformerLayer

    cfg = layer.config
    return (type(layer)._forward_mlp is TransformerLayer._forward_mlp  # not a MoE layer with partial graphs
            and type(layer.input_layernorm) is RMSNorm and type(layer.pre_mlp_layernorm) is RMSNorm
            and isinstance(layer.cross_attention, IdentityOp) and isinstance(layer.pre_cross_attn_layernorm, IdentityOp)
            and not (layer.recompute_input_layernorm or layer.recompute_pre_mlp_layernorm or layer.recompute_mlp)
            and not (getattr(layer, "offload_attn_norm", False) or getattr(layer, "offload_mlp_norm", False))
            and not cfg.inference_fuse_tp_communication and not getattr(cfg, "fp32_residual_connection", False)
            and getattr(cfg, "mlp_chunks_for_prefill", 1) <= 1 and getattr(cfg, "mlp_chunks_for_training", 1) <= 1)


def add_residual(output_with_bias: tuple[torch.Tensor, torch.Tensor | None], residual: torch.Tensor) -> torch.Tensor:
    """megatron's bias-dropout-add with no dropout in effect: ``residual + (output + bias)``, the
    residual in the output's dtype."""
    output, bias = output_with_bias
    if residual.dtype != output.dtype:
        residual = residual.to(output.dtype)
    return residual + (output if bias is None else output + bias)


def plain_layer_forward(forward: Callable) -> Callable:
    """Wrap ``TransformerLayer.forward``: without autograd, on a CPU, for a layer that :func:`is_plain`
    and is called with keywords only, run its submodules directly; otherwise call megatron's."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        kwargs.pop("dynamic_inference_decode_only", None)  # a CUDA-graph key megatron's forward drops too
        hidden_states = kwargs.get("hidden_states")
        if (args or hidden_states is None or torch.is_grad_enabled() or hidden_states.device.type != "cpu"
                or (self.training and self.hidden_dropout > 0) or not _PLAIN_KWARGS.issuperset(kwargs)
                or kwargs.get("packed_seq_params") is not None):  # 0.19 reshapes packed batches around a MoE
            return forward(self, *args, **kwargs)
        if not decided_once(self, "_r1hpc_plain_layer", is_plain):
            return forward(self, *args, **kwargs)
        attention = self.self_attention(self.input_layernorm(hidden_states),
                                        **{key: kwargs.get(key) for key in ATTENTION_KWARGS})
        hidden_states = add_residual(attention, hidden_states)
        mlp = self.mlp(self.pre_mlp_layernorm(hidden_states), padding_mask=kwargs.get("padding_mask"))
        return add_residual(mlp, hidden_states), kwargs.get("context")

    return wrapper
