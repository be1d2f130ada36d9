"""MoE layers without autograd on a CPU run each expert's rows directly (r1hpc.model.cpu_moe): the
output equals megatron's dispatcher path bit for bit (same products on the same rows, the router's
probability applied where megatron's expert applies it, contributions added in the same order and
dtype), for fp32 and bf16, both token dispatchers, with and without a (gated) shared expert and with
an expert that gets no token; with autograd megatron's own forward runs.

Exact equality is the tolerance: applying the probability after ``fc2`` instead of before it, or
summing the experts in another order or dtype, is the same math but not the same bits, and fails.
"""
from __future__ import annotations

import pytest
import torch

from tests.multiproc import run_workers

VARIANTS = [  # (params_dtype, dispatcher, shared expert size, shared expert gate)
    ("fp32", "alltoall", None, False),
    ("bf16", "allgather", 48, True),
    ("fp32", "alltoall", 48, False),
]


def _moe_layer_both_ways(variants: list) -> list[dict]:
    from megatron.core.transformer.moe.moe_layer import MoELayer

    from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
    from r1hpc.model.config import ModelConfig
    from r1hpc.model.cpu_moe import runs_locally
    from r1hpc.model.provider import build_model

    results = []
    for params_dtype, dispatcher, shared, gate in variants:
        cfg = ModelConfig(vocab_size=128, num_layers=1, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4,
                          max_seq_length=32, params_dtype=params_dtype, num_moe_experts=4, moe_router_topk=2,
                          moe_ffn_hidden_size=40, moe_shared_expert_intermediate_size=shared,
                          moe_shared_expert_gate=gate, moe_token_dispatcher_type=dispatcher)
        init_distributed(ParallelConfig(), cfg, seed=0)
        layer = build_model(cfg, ParallelConfig()).eval().decoder.layers[0].mlp
        dtype = next(layer.parameters()).dtype
        g = torch.Generator().manual_seed(0)
        hidden = torch.rand(5, 3, 32, generator=g).to(dtype)  # [s, b, h], positive
        with torch.no_grad():  # expert 3 scores 0, the others score > 0: no token is routed to it
            layer.router.weight.copy_(torch.rand(4, 32, generator=g).to(dtype))
            layer.router.weight[3] = 0
        dispatched = []
        original_dispatch = layer.token_dispatcher.token_dispatch
        layer.token_dispatcher.token_dispatch = lambda *a, **k: dispatched.append(1) or original_dispatch(*a, **k)
        with torch.no_grad():
            direct, direct_bias = layer(hidden)
            dispatched_before = len(dispatched)
            reference, _ = MoELayer.forward.__wrapped__(layer, hidden)
            _, routing_map = layer.route(hidden)
        with_grad, _ = layer(hidden)
        results.append({"equal": torch.equal(direct, reference), "max_diff": (direct - reference).abs().max().item(),
                        "dtype": direct.dtype, "bias": direct_bias, "runs_locally": runs_locally(layer),
                        "dispatched_without_grad": dispatched_before, "dispatched_in_all": len(dispatched),
                        "grad_output": with_grad.requires_grad, "tokens_per_expert": routing_map.sum(0).tolist()})
        destroy_distributed()
    return results


@pytest.mark.skipif(torch.cuda.is_available(), reason="the patch applies only without CUDA")
def test_direct_moe_forward_equals_megatron_bit_for_bit():
    (results,) = run_workers(_moe_layer_both_ways, 1, VARIANTS)
    for variant, out in zip(VARIANTS, results):
        assert out["runs_locally"], variant
        assert out["tokens_per_expert"][3] == 0 and sum(out["tokens_per_expert"]) == 2 * 15, variant
        assert out["dtype"] == (torch.bfloat16 if variant[0] == "bf16" else torch.float32), variant
        assert out["equal"], (variant, out["max_diff"])
        assert out["bias"] is None
        # no dispatcher without autograd; megatron's forward (the reference, then with autograd) dispatches
        assert (out["dispatched_without_grad"], out["dispatched_in_all"]) == (0, 2), variant
        assert out["grad_output"], variant


def _runs_locally_with_each(overrides: dict) -> dict:
    """``runs_locally`` of a plain MoE layer, then with each config override alone."""
    from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
    from r1hpc.model.config import ModelConfig
    from r1hpc.model.cpu_moe import runs_locally
    from r1hpc.model.provider import build_model

    cfg = ModelConfig(vocab_size=128, num_layers=1, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4,
                      max_seq_length=32, num_moe_experts=4, moe_router_topk=2, moe_ffn_hidden_size=40)
    init_distributed(ParallelConfig(), cfg, seed=0)
    layer = build_model(cfg, ParallelConfig()).decoder.layers[0].mlp
    results = {"plain": runs_locally(layer)}
    for key, value in overrides.items():
        before = getattr(layer.config, key)
        setattr(layer.config, key, value)
        results[key] = runs_locally(layer)
        setattr(layer.config, key, before)
    destroy_distributed()
    return results


@pytest.mark.skipif(torch.cuda.is_available(), reason="the patch applies only without CUDA")
def test_configs_the_direct_forward_does_not_compute_go_through_megatron():
    overrides = {"add_bias_linear": True, "activation_func_clamp_value": 7.0, "moe_apply_probs_on_input": True,
                 "use_te_activation_func": True, "bias_activation_fusion": True, "moe_latent_size": 16,
                 "moe_pad_expert_input_to_capacity": True}
    (results,) = run_workers(_runs_locally_with_each, 1, overrides)
    assert results == {"plain": True, **{key: False for key in overrides}}
