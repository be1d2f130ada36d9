"""Without autograd on a CPU, transformer layers and linear layers skip megatron's training machinery
(r1hpc.model.cpu_layer, r1hpc.model.cpu_linear): the outputs equal megatron's forward bit for bit,
for dense and MoE layers, fp32 and bf16, with QKV biases, GQA and a tied output layer; with autograd,
or with dropout in effect, megatron's forward runs.

Exact equality is the tolerance: the direct paths call the same submodules and products on the same
tensors as megatron's forward, so nothing may differ.
"""
from __future__ import annotations

import pytest
import torch

from tests.multiproc import run_workers

VARIANTS = [  # (params_dtype, MoE experts, QKV bias, query groups)
    ("fp32", None, True, 2),
    ("bf16", None, False, None),
    ("fp32", 4, False, 2),
]


def _layers_both_ways(variants: list) -> list[dict]:
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.transformer_layer import TransformerLayer

    from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
    from r1hpc.model.config import ModelConfig
    from r1hpc.model.provider import build_model

    results = []
    for params_dtype, experts, qkv_bias, groups in variants:
        cfg = ModelConfig(vocab_size=96, num_layers=1, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4,
                          num_query_groups=groups, max_seq_length=32, params_dtype=params_dtype, add_qkv_bias=qkv_bias,
                          num_moe_experts=experts, moe_ffn_hidden_size=40 if experts else None, dropout=0.1)
        init_distributed(ParallelConfig(), cfg, seed=0)
        model = build_model(cfg, ParallelConfig()).eval()
        layer = model.decoder.layers[0]
        dtype = next(layer.parameters()).dtype
        g = torch.Generator().manual_seed(0)
        hidden = torch.randn(7, 3, 32, generator=g).to(dtype)  # [s, b, h]
        emb = model.rotary_pos_emb(7)
        mask = torch.rand(3, 1, 7, 7, generator=g) > 0.7  # True = masked out
        calls = []
        attention_block = TransformerLayer._forward_attention
        TransformerLayer._forward_attention = lambda *a, **k: calls.append(1) or attention_block(*a, **k)
        kwargs = dict(hidden_states=hidden, attention_mask=mask, rotary_pos_emb=emb)
        with torch.no_grad():
            plain, context = layer(**kwargs)
            plain_calls = len(calls)
            reference, _ = TransformerLayer.forward.__wrapped__(layer, **kwargs)
            linears = _linears_both_ways(model, hidden, ColumnParallelLinear, RowParallelLinear)
        with_grad, _ = layer(**kwargs)
        model.train()  # dropout 0.1 now in effect: megatron's forward draws it
        with torch.no_grad():
            layer(**kwargs)
        TransformerLayer._forward_attention = attention_block
        results.append({"equal": torch.equal(plain, reference), "max_diff": (plain - reference).abs().max().item(),
                        "dtype": plain.dtype, "context": context, "plain_calls": plain_calls,
                        "megatron_calls": len(calls), "grad_output": with_grad.requires_grad, "linears": linears})
        destroy_distributed()
    return results


def _linears_both_ways(model, hidden, column, row) -> dict:
    """Each linear's direct output against megatron's forward: (output equal, bias handed back equal)."""
    attention = model.decoder.layers[0].self_attention
    projected = hidden.new_empty(hidden.shape[:2] + (attention.linear_proj.input_size,)).normal_()
    logits_in = model.decoder.final_layernorm(hidden)
    cases = {"qkv": (attention.linear_qkv, (hidden,), column), "proj": (attention.linear_proj, (projected,), row),
             "output_tied": (model.output_layer, (logits_in, model.shared_embedding_or_output_weight()), column)}
    out = {}
    for name, (linear, args, cls) in cases.items():
        (direct, direct_bias), (want, want_bias) = linear(*args), cls.forward.__wrapped__(linear, *args)
        out[name] = (torch.equal(direct, want), direct_bias is want_bias, linear.__dict__.get("_r1hpc_one_rank"))
    return out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the patches apply only without CUDA")
def test_plain_layer_and_direct_linears_equal_megatron_bit_for_bit():
    (results,) = run_workers(_layers_both_ways, 1, VARIANTS)
    for variant, out in zip(VARIANTS, results):
        assert out["equal"], (variant, out["max_diff"])
        assert out["dtype"] == (torch.bfloat16 if variant[0] == "bf16" else torch.float32), variant
        assert out["context"] is None
        # the plain path never enters megatron's attention block; the reference, autograd and dropout do
        assert (out["plain_calls"], out["megatron_calls"]) == (0, 3), variant
        assert out["grad_output"], variant
        for name, (equal, same_bias, one_rank) in out["linears"].items():
            assert equal and same_bias and one_rank, (variant, name)


def _plain_with_each(overrides: dict) -> dict:
    """``is_plain`` of a dense layer, then with each config override alone."""
    import dataclasses

    from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
    from r1hpc.model.config import ModelConfig
    from r1hpc.model.cpu_layer import is_plain
    from r1hpc.model.provider import build_model

    cfg = ModelConfig(vocab_size=64, num_layers=1, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4,
                      max_seq_length=16)
    init_distributed(ParallelConfig(), cfg, seed=0)
    layer = build_model(cfg, ParallelConfig()).decoder.layers[0]
    out, original = {"plain": is_plain(layer)}, layer.config
    for key, value in overrides.items():
        layer.config = dataclasses.replace(original, **{key: value})
        out[key] = is_plain(layer)
    layer.config = original
    for name in ("recompute_input_layernorm", "recompute_mlp"):
        setattr(layer, name, True)
        out[name] = is_plain(layer)
        setattr(layer, name, False)
    destroy_distributed()
    return out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the patches apply only without CUDA")
def test_layers_megatron_computes_differently_are_not_plain():
    (out,) = run_workers(_plain_with_each, 1, {"fp32_residual_connection": True, "mlp_chunks_for_prefill": 2})
    assert out.pop("plain")
    assert not any(out.values()), out
