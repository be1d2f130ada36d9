"""Rank functions for the dynamic-engine tests (spawned by tests.multiproc.run_workers): each runs the
static loop and the dynamic engine on the same model and prompts and returns what both produced."""
from __future__ import annotations

import contextlib
import random

import torch

from r1hpc.config import ConfigError
from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
from r1hpc.model.config import ModelConfig
from r1hpc.model.provider import build_model
from r1hpc.model.routing_replay import attach
from r1hpc.model.weights import load_model_weights, save_model_weights
from r1hpc.rollout.engines import generate_with

# a large init scale: greedy decoding of a random model then wanders instead of repeating one token,
# so responses end at many different lengths
DENSE = dict(vocab_size=97, num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
             num_query_groups=2, max_seq_length=64, init_method_std=1.0)
MOE = dict(DENSE, num_moe_experts=4, moe_router_topk=2, moe_ffn_hidden_size=64)
MAX_NEW = 24
# every 7th token stops a response: most stop within a few tokens, a few run to MAX_NEW (a long tail)
STOP = list(range(3, 97, 7))
# engine settings that change how requests share steps: all at once; at most 5 together (the rest join as
# others finish, so one step mixes prefills and decodes at different steps); a KV pool of 3 blocks of 16
# tokens (requests wait for blocks, are paused and evicted and come back)
BLOCK_TOKENS = 16  # the small pool's blocks (in the CPU default, 64, a whole request fits one block)
VARIANTS = {"all-at-once": {}, "5-rows": {"max_batch_rows": 5}, "small-pool": {"kv_blocks": 3}}


def prompts(n: int = 24, seed: int = 0) -> list[list[int]]:
    """Prompts of 1 to 20 tokens, two of them repeated (identical requests must still draw apart)."""
    rng = random.Random(seed)
    out = [[rng.randrange(97) for _ in range(rng.choice([1, 2, 3, 5, 8, 13, 20]))] for _ in range(n - 2)]
    return out + [out[0], out[1]]


def _pool_gb(model, blocks: int) -> float:
    """A KV pool of ``blocks`` usable blocks of ``BLOCK_TOKENS`` for ``model``."""
    c = model.config
    per_block = 4 * 2 * c.num_layers * BLOCK_TOKENS * c.kv_channels * c.num_query_groups // c.tensor_model_parallel_size
    return (blocks + 1) * per_block / 1024**3


@contextlib.contextmanager
def _observed_steps(seen: dict):
    """Record, from megatron's own context, what its steps held: prefill and decode requests together,
    paused requests (waiting for KV blocks), evicted requests (re-queued to be prefilled again)."""
    from megatron.core.inference.contexts import DynamicInferenceContext

    init, update = DynamicInferenceContext.initialize_attention_state, DynamicInferenceContext.update_requests

    def initialize_attention_state(ctx, *a, **k):
        seen["mixed"] |= ctx.num_prefill_requests > 0 and ctx.num_decode_requests > 0
        return init(ctx, *a, **k)

    def update_requests(ctx, *a, **k):
        out = update(ctx, *a, **k)
        seen["paused"] |= ctx.paused_request_count > 0
        seen["evicted"] |= bool(out) and out.get("evict_request_ids") is not None and len(out["evict_request_ids"]) > 0
        return out

    DynamicInferenceContext.initialize_attention_state = initialize_attention_state
    DynamicInferenceContext.update_requests = update_requests
    try:
        yield
    finally:
        DynamicInferenceContext.initialize_attention_state, DynamicInferenceContext.update_requests = init, update


def _run(engine: str, model, variant: dict, *, temperature: float, seed: int = 5, **kw) -> dict:
    variant = dict(variant)
    if "kv_blocks" in variant:
        variant["kv_cache_gb"] = _pool_gb(model, variant.pop("kv_blocks"))
        variant["kv_block_tokens"] = BLOCK_TOKENS
    if engine == "static":
        variant = {}
    seen = {"mixed": False, "paused": False, "evicted": False}
    grad_modes: list[bool] = []  # autograd on in a decode forward keeps every step's graph alive
    hook = model.register_forward_pre_hook(lambda module, args: grad_modes.append(torch.is_grad_enabled()))
    try:
        with _observed_steps(seen):
            samples = generate_with(engine, model, prompts(), vocab_size=97, stop_ids=STOP, temperature=temperature,
                                    max_new_tokens=MAX_NEW, max_seq_length=64,
                                    generator=torch.Generator().manual_seed(seed), **variant, **kw)
    finally:
        hook.remove()
    return {"ids": [s.response_ids for s in samples], "truncated": [s.truncated for s in samples],
            "logps": [s.logprobs for s in samples], "ents": [s.entropies for s in samples], "seen": seen,
            "routing": [s.routing for s in samples],
            "logp_requires_grad": any(s.logprobs.requires_grad or s.logprobs.is_inference() for s in samples),
            "forwards": len(grad_modes), "forwards_with_grad": sum(grad_modes)}


def _kv_pool_error(model) -> str:
    """The message for a pool smaller than one request at full length (prompt 20 + 24 tokens = 3 blocks)."""
    try:
        _run("dynamic", model, {"kv_blocks": 2}, temperature=0.0)
    except ConfigError as e:
        return str(e)
    return "no error"


def engines_compared(model_kw: dict, parallel_kw: dict, ckpt: str, mode: str) -> dict:
    """Greedy and sampled (compiled sampler) rollouts of both engines, every variant of the dynamic one."""
    model_cfg, parallel_cfg = ModelConfig(**model_kw), ParallelConfig(**parallel_kw)
    init_distributed(parallel_cfg, model_cfg, seed=3)
    model = build_model(model_cfg, parallel_cfg)
    (save_model_weights if mode == "save" else load_model_weights)(model, ckpt)
    if model_cfg.num_moe_experts:
        attach(model)  # both engines record each fed token's experts (routing replay)
    out = {"static/greedy": _run("static", model, {}, temperature=0.0),
           "static/sampled": _run("static", model, {}, temperature=1.0, top_p=0.9, top_k=40, sampler="native")}
    for name, variant in VARIANTS.items():
        out[f"{name}/greedy"] = _run("dynamic", model, variant, temperature=0.0)
        out[f"{name}/sampled"] = _run("dynamic", model, variant, temperature=1.0, top_p=0.9, top_k=40,
                                      sampler="native")
    out["other-seed/sampled"] = _run("dynamic", model, {}, temperature=1.0, top_p=0.9, top_k=40, sampler="native",
                                     seed=6)
    out["kv_pool_error"] = _kv_pool_error(model)
    out["training_mode_kept"] = model.training
    destroy_distributed()
    return out
