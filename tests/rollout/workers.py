"""Rank functions for rollout tests (spawned by tests.multiproc.run_workers)."""
from __future__ import annotations

import torch

from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
from r1hpc.model.config import ModelConfig
from r1hpc.model.provider import build_model, causal_attention_mask, sequence_parallel_off
from r1hpc.model.weights import load_model_weights, save_model_weights
from r1hpc.rollout.generate import generate

MODEL = dict(vocab_size=97, num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
             num_query_groups=2, max_seq_length=64, num_moe_experts=4, moe_router_topk=2, moe_ffn_hidden_size=64)
PROMPTS = [[5, 6, 7], [5, 6, 7], [8, 9, 10, 11, 12], [3], [40, 41], [50, 51, 52, 53, 54, 55], [60], [70, 71, 72]]


def greedy_both_ways(parallel_kw: dict, ckpt: str, mode: str, stop: list[int]) -> dict:
    """Greedy rollout with the KV cache, and the same by re-running the full prefix each step."""
    model_cfg, parallel_cfg = ModelConfig(**MODEL), ParallelConfig(**parallel_kw)
    init_distributed(parallel_cfg, model_cfg, seed=3)
    model = build_model(model_cfg, parallel_cfg)
    (save_model_weights if mode == "save" else load_model_weights)(model, ckpt)
    model.eval()
    cached = generate(model, PROMPTS, vocab_size=97, stop_ids=stop, temperature=0.0, max_new_tokens=12,
                      max_seq_length=64)
    naive = []
    with torch.no_grad(), sequence_parallel_off(model):
        for p in PROMPTS:
            seq = list(p)
            for _ in range(12):
                t = torch.tensor([seq])
                logits = model(t, torch.arange(len(seq))[None], causal_attention_mask(len(seq)),
                               runtime_gather_output=True)[0, -1, :97]
                seq.append(int(logits.argmax()))
                if seq[-1] in stop:
                    break
            naive.append(seq[len(p):])
    out = {"cached": [s.response_ids for s in cached], "naive": naive,
           "logp_finite": all(bool(torch.isfinite(s.logprobs).all()) for s in cached),
           "truncated": [s.truncated for s in cached]}
    destroy_distributed()
    return out


def sample_in_chunks() -> dict:
    """Temperature sampling of PROMPTS with both samplers, all rows in one batch and in batches of 3."""
    model_cfg, parallel_cfg = ModelConfig(**MODEL), ParallelConfig()
    init_distributed(parallel_cfg, model_cfg, seed=3)
    model = build_model(model_cfg, parallel_cfg)
    out = {}
    for sampler in ("native", "torch"):
        for rows in (64, 3):
            samples = generate(model, PROMPTS, vocab_size=97, stop_ids=list(range(0, 97, 5)), temperature=1.0,
                               top_p=0.9, max_new_tokens=10, max_seq_length=64, max_batch_rows=rows,
                               generator=torch.Generator().manual_seed(5), sampler=sampler)
            out[f"{sampler}/{rows}"] = [s.response_ids for s in samples]
    destroy_distributed()
    return out


def shared_prefill_or_not() -> dict:
    """A GRPO-shaped rollout (each prompt 4 times, mixed lengths) on the MoE model with routing
    recorded, sampled by the compiled sampler: once with each group prefilling its prompt once (the
    default), once with every row prefilled (``_distinct_prompts`` made to see every row as distinct);
    and the number of rows each way's prefill fed."""
    from r1hpc.model.routing_replay import attach
    from r1hpc.rollout import generate as generate_module

    model_cfg, parallel_cfg = ModelConfig(**MODEL), ParallelConfig()
    init_distributed(parallel_cfg, model_cfg, seed=3)
    model = build_model(model_cfg, parallel_cfg)
    attach(model)
    prompts = [p for p in PROMPTS[2:6] for _ in range(4)]
    fed_rows: list[int] = []
    hook = model.embedding.register_forward_pre_hook(
        lambda m, args, kwargs: fed_rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    out = {}
    distinct = generate_module._distinct_prompts
    for way in ("shared", "every-row"):
        if way == "every-row":
            generate_module._distinct_prompts = lambda ps: (list(range(len(ps))),
                                                             torch.arange(len(ps), dtype=torch.long))
        fed_rows.clear()
        samples = generate(model, prompts, vocab_size=97, stop_ids=list(range(0, 97, 5)), temperature=1.0,
                           max_new_tokens=10, max_seq_length=64, generator=torch.Generator().manual_seed(5),
                           sampler="native")
        out[way] = {"tokens": [s.response_ids for s in samples], "logprobs": [s.logprobs for s in samples],
                    "routing": [s.routing for s in samples], "prefill_rows": fed_rows[0]}
    generate_module._distinct_prompts = distinct
    hook.remove()
    destroy_distributed()
    return out


def rotated_key_cache_or_megatrons() -> dict:
    """A sampled rollout (mixed prompt lengths, staggered stops: the cache is compacted mid-decode)
    with r1hpc's self-attention, which rotates keys as they enter the static KV cache, and again with
    the same weights through megatron's ``SelfAttention``, which rotates the whole cached history each
    step; per way, the most key positions one decode-step RoPE call rotated, and where the dynamic
    engine runs on a CPU, its rollout (3 rows for 8 requests) each way too."""
    from megatron.core.models.common.embeddings import rope_utils
    from megatron.core.transformer import attention

    from r1hpc.model import mcore_compat, rope, rotated_kv_cache
    from r1hpc.model.rotated_kv_cache import RotatedKeyCacheSelfAttention
    from r1hpc.rollout.engines import generate_with

    model_cfg, parallel_cfg = ModelConfig(**MODEL), ParallelConfig()
    init_distributed(parallel_cfg, model_cfg, seed=3)
    model = build_model(model_cfg, parallel_cfg)
    layers = [m for m in model.modules() if isinstance(m, RotatedKeyCacheSelfAttention)]
    rotated: list[tuple[int, int]] = []  # (positions, key heads) of each RoPE call

    def counting(rope):
        def counted(t, *args, **kwargs):
            rotated.append((t.shape[0], t.shape[2]))
            return rope(t, *args, **kwargs)
        return counted

    attention.apply_rotary_pos_emb = counting(rope_utils.apply_rotary_pos_emb)
    rotated_kv_cache.rotate = counting(rope.rotate)
    out = {"layers": len(layers)}
    for way in ("rotated-cache", "megatron"):
        if way == "megatron":
            for layer in layers:
                layer.__class__ = attention.SelfAttention
        rotated.clear()
        samples = generate(model, PROMPTS, vocab_size=97, stop_ids=list(range(0, 97, 5)), temperature=1.0,
                           max_new_tokens=10, max_seq_length=64, generator=torch.Generator().manual_seed(5),
                           sampler="native")
        prefill = max(len(p) for p in PROMPTS)
        key_calls = [n for n, heads in rotated if heads == MODEL["num_query_groups"]]
        out[way] = {"tokens": [s.response_ids for s in samples], "logprobs": [s.logprobs for s in samples],
                    "decode_key_positions": max(n for n in key_calls if n != prefill)}
        if mcore_compat.features().dynamic_engine_cpu:  # the paged cache's forward, against megatron's too
            samples = generate_with("dynamic", model, PROMPTS, vocab_size=97, stop_ids=list(range(0, 97, 5)),
                                    temperature=1.0, max_new_tokens=10, max_seq_length=64,
                                    generator=torch.Generator().manual_seed(5), sampler="native", max_batch_rows=3)
            out[way]["dynamic"] = ([s.response_ids for s in samples], [s.logprobs for s in samples])
    attention.apply_rotary_pos_emb, rotated_kv_cache.rotate = rope_utils.apply_rotary_pos_emb, rope.rotate
    destroy_distributed()
    return out
