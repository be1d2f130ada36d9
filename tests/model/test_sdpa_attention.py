"""The local spec's SDPA core attention computes what megatron's DotProductAttention computes: grouped-query
attention with megatron's masks (a left-padded batch's bool mask, the causal default, a decode row
without a mask), query-key layer scaling, forward and backward; fully masked rows stay finite.

Tolerance: the same fp32 softmax-weighted sums in another order (a fused kernel against baddbmm,
softmax, bmm): rtol 1e-5, atol 1e-5 on outputs and gradients of size ~1. A wrong scale, a group
attending to the wrong heads, or an inverted mask moves outputs by O(0.1).
"""
from __future__ import annotations

import pytest
import torch

from tests.multiproc import run_workers

SQ, B, HEADS, GROUPS, HN = 12, 3, 6, 2, 16


def _inputs(sq: int, sk: int, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(sq, B, HEADS, HN, generator=g)
    k = torch.randn(sk, B, GROUPS, HN, generator=g)
    v = torch.randn(sk, B, GROUPS, HN, generator=g)
    return q, k, v


def _compare(layer_scaling: bool) -> dict:
    """Per case: megatron's output and gradients, ours, and which query rows have every key masked."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
    from r1hpc.model.config import ModelConfig
    from r1hpc.model.provider import transformer_config
    from r1hpc.model.sdpa_attention import SdpaDotProductAttention

    model_cfg = ModelConfig(vocab_size=64, num_layers=3, hidden_size=HEADS * HN, ffn_hidden_size=64,
                            num_attention_heads=HEADS, num_query_groups=GROUPS, max_seq_length=32)
    init_distributed(ParallelConfig(), model_cfg, seed=0)
    config = transformer_config(model_cfg, ParallelConfig())
    config.apply_query_key_layer_scaling = layer_scaling
    pads = torch.tensor([0, 3, 7])
    causal = torch.triu(torch.ones(SQ, SQ, dtype=torch.bool), 1)[None, None]
    padded = causal | (torch.arange(SQ)[None, None, None, :] < pads[:, None, None, None])  # [B, 1, SQ, SQ]
    decode_pad = (torch.arange(SQ + 1)[None, None, None, :] < pads[:, None, None, None])  # [B, 1, 1, SQ + 1]
    cases = {"padded-prefill": (SQ, SQ, padded), "causal-default": (SQ, SQ, None),
             "decode-masked": (1, SQ + 1, decode_pad), "decode-unmasked": (1, SQ + 1, None)}
    out = {}
    for name, (sq, sk, mask) in cases.items():
        results = []
        for cls in (DotProductAttention, SdpaDotProductAttention):
            layer = cls(config, layer_number=3, attn_mask_type=AttnMaskType.causal, attention_type="self")
            q, k, v = (t.requires_grad_() for t in _inputs(sq, sk, seed=len(name)))
            ctx = layer(q, k, v, mask, attn_mask_type=AttnMaskType.causal)
            weight = torch.randn(ctx.shape, generator=torch.Generator().manual_seed(1))
            (ctx * weight).sum().backward()
            results.append({"out": ctx.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad})
        full = mask.all(dim=-1)[:, 0].transpose(0, 1) if mask is not None else torch.zeros(sq, B, dtype=torch.bool)
        out[name] = {"megatron": results[0], "sdpa": results[1], "fully_masked": full}  # [sq, b]
    destroy_distributed()
    return out


@pytest.mark.parametrize("layer_scaling", [False, True], ids=["plain", "qk-layer-scaling"])
def test_sdpa_core_attention_matches_megatron(layer_scaling):
    (cases,) = run_workers(_compare, 1, layer_scaling)
    assert cases["padded-prefill"]["fully_masked"].any()  # the case exists: left-padding queries
    for name, case in cases.items():
        ref, ours, dead = case["megatron"], case["sdpa"], case["fully_masked"]
        assert torch.isfinite(ours["out"]).all(), name
        live = ~dead  # a fully masked row is padding no real token reads; megatron averages it uniformly
        torch.testing.assert_close(ours["out"][live], ref["out"][live], rtol=1e-5, atol=1e-5, msg=name)
        for grad in ("dq", "dk", "dv"):
            r, o = ref[grad], ours[grad]
            if grad == "dq":
                r, o = r[live], o[live]
            elif dead.any():  # keys also feed the dead rows, whose gradients differ; compare live-only cases
                continue
            torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5, msg=f"{name} {grad}")


def _bf16_cases() -> dict:
    """A padded prefill in bf16: with autograd (training), its output and gradients, and those of the
    same values in fp32; without autograd (a rollout), its output and bf16 SDPA's."""
    import torch.nn.functional as F
    from megatron.core.transformer.enums import AttnMaskType

    from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
    from r1hpc.model.config import ModelConfig
    from r1hpc.model.provider import transformer_config
    from r1hpc.model.sdpa_attention import MASKED_SCORE, SdpaDotProductAttention

    model_cfg = ModelConfig(vocab_size=64, num_layers=3, hidden_size=HEADS * HN, ffn_hidden_size=64,
                            num_attention_heads=HEADS, num_query_groups=GROUPS, max_seq_length=32)
    init_distributed(ParallelConfig(), model_cfg, seed=0)
    layer = SdpaDotProductAttention(transformer_config(model_cfg, ParallelConfig()), layer_number=1,
                                    attn_mask_type=AttnMaskType.causal, attention_type="self")
    mask = torch.triu(torch.ones(SQ, SQ, dtype=torch.bool), 1)[None, None]
    # the context's gradient, exact in bf16: both cases backpropagate the same values
    weight = torch.randn(SQ, B, HEADS * HN, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16).float()
    out = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        q, k, v = (t.to(torch.bfloat16).to(dtype).requires_grad_() for t in _inputs(SQ, SQ, seed=5))
        ctx = layer(q, k, v, mask)
        (ctx.float() * weight).sum().backward()
        out[name] = {"out": ctx.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad}
    q, k, v = (t.to(torch.bfloat16) for t in _inputs(SQ, SQ, seed=5))
    with torch.no_grad():
        out["rollout"] = layer(q, k, v, mask)
        bias = torch.zeros(mask.shape, dtype=torch.bfloat16).masked_fill_(mask, MASKED_SCORE)
        ref = F.scaled_dot_product_attention(*(t.permute(1, 2, 0, 3) for t in (q, k, v)), attn_mask=bias,
                                             scale=layer.softmax_scale, enable_gqa=True)
        out["rollout_ref"] = ref.permute(2, 0, 1, 3).reshape(SQ, B, HEADS * HN)
    destroy_distributed()
    return out


def test_bf16_training_attention_runs_in_fp32_on_a_cpu():
    """bf16 attention with autograd on a CPU is the fp32 computation of the same values, rounded once to
    bf16 (output and gradients); without autograd it stays bf16 SDPA."""
    (case,) = run_workers(_bf16_cases, 1)
    bf16, fp32 = case["bf16"], case["fp32"]
    assert bf16["out"].dtype == torch.bfloat16 and bf16["dq"].dtype == torch.bfloat16
    for key in ("out", "dq", "dk", "dv"):
        assert torch.equal(bf16[key], fp32[key].to(torch.bfloat16)), key
    assert case["rollout"].dtype == torch.bfloat16
    assert torch.equal(case["rollout"], case["rollout_ref"])
