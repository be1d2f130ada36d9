"""Rank functions for the routing replay tests (top level so spawn can import them)."""
from __future__ import annotations

import math

import torch

from r1hpc.config import ConfigError
from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
from r1hpc.model.config import ModelConfig
from r1hpc.model.provider import build_model, causal_attention_mask
from r1hpc.model.routing_replay import RoutingReplayConfig, attach, moe_routers
from r1hpc.model.weights import load_model_weights, save_model_weights
from r1hpc.rollout.generate import generate
from r1hpc.train.batching import pack_rows, split_rows
from r1hpc.train.lm_loss import position_ids
from r1hpc.train.routing import TrainerRouting

VOCAB = 97
MOE = dict(vocab_size=VOCAB, num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
           max_seq_length=64, num_moe_experts=4, moe_router_topk=2, moe_ffn_hidden_size=64)
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12], [3], [40, 41], [50, 51, 52, 53, 54, 55], [60], [70, 71, 72], [20, 21]] * 4


def _used_sets(maps: list, b: int) -> list:
    """Per layer, the [b, s_local, k] sorted experts each token was sent to (from the routing maps)."""
    out = []
    for rmap in maps:
        k = int(rmap[0].sum())
        idx = rmap.nonzero()[:, 1].view(-1, k)  # exactly k experts per token, in expert order
        out.append(idx.view(-1, b, k).transpose(0, 1))
    return out


def replay_probe(parallel_kw: dict, ckpt: str, mode: str, params_dtype: str) -> dict:
    """Roll out with recording, then run the trainer's forward over the packed rows with replay off
    and on; per mode: the (token, layer) pairs whose experts differ from the rollout's (all fed
    positions and the response positions) and |log p_rollout - log p_trainer| on response tokens."""
    model_cfg = ModelConfig(params_dtype=params_dtype, **MOE)
    parallel_cfg = ParallelConfig(**parallel_kw)
    init_distributed(parallel_cfg, model_cfg, seed=3)
    model = build_model(model_cfg, parallel_cfg)
    (save_model_weights if mode == "save" else load_model_weights)(model, ckpt)
    instances = attach(model)
    samples = generate(model, PROMPTS, vocab_size=VOCAB, stop_ids=[0], temperature=1.0, max_new_tokens=16,
                       max_seq_length=64, generator=torch.Generator().manual_seed(7), sampler="torch")
    assert all(s.routing.shape == (len(s.prompt_ids) + len(s.response_ids) - 1, 2, 2) for s in samples)
    tp = parallel_cfg.tensor_model_parallel_size
    rows = pack_rows(samples, pad_id=0)
    micro = split_rows(rows, 8, math.ceil(len(samples) / 8), tp if model.config.sequence_parallel else 1)
    maps: list = []
    hooks = [r.register_forward_hook(lambda mod, inp, out: maps.append(out[1].detach())) for r in moe_routers(model)]
    out = {"routing": [s.routing for s in samples]}
    model.eval()
    for replay in ("off", "rollout"):
        ctrl = TrainerRouting(RoutingReplayConfig(replay=replay), instances, [])
        out[replay] = _forward_all(model, ctrl, micro, maps, tp)
        out[replay]["metrics"] = ctrl.step_metrics()
    for h in hooks:
        h.remove()
    destroy_distributed()
    return out


@torch.no_grad()
def _forward_all(model, ctrl: TrainerRouting, micro: list, maps: list, tp: int) -> dict:
    from megatron.core import parallel_state

    stats = {"differ": 0, "compared": 0, "differ_resp": 0, "compared_resp": 0, "absdiff": []}
    for mb in micro:
        maps.clear()
        tokens = mb["tokens"]
        with ctrl.forward(model, mb):
            logits = model(tokens, position_ids(tokens), causal_attention_mask(tokens.shape[1]),
                           runtime_gather_output=True)
        sel = mb["response_mask"]
        logp = torch.log_softmax(logits[..., :VOCAB].float(), -1).gather(-1, mb["targets"][..., None])[..., 0]
        stats["absdiff"].append((logp - mb["rollout_logp"])[sel].abs())
        s = tokens.shape[1] // tp if model.config.sequence_parallel else tokens.shape[1]
        lo = parallel_state.get_tensor_model_parallel_rank() * s if model.config.sequence_parallel else 0
        ends = torch.where(sel.any(1), sel.shape[1] - sel.flip(1).int().argmax(1), 0)  # each row's fed length
        real = (torch.arange(sel.shape[1])[None] < ends[:, None])[:, lo:lo + s]
        for layer, used in enumerate(_used_sets(maps, tokens.shape[0])):
            want = mb["routing"][:, lo:lo + s, layer].long().sort(-1).values
            differ = (used != want).any(-1)
            stats["differ"] += int((differ & real).sum())
            stats["compared"] += int(real.sum())
            stats["differ_resp"] += int((differ & sel[:, lo:lo + s]).sum())
            stats["compared_resp"] += int(sel[:, lo:lo + s].sum())
    diffs = torch.cat(stats.pop("absdiff"))
    stats.update(mean_absdiff=float(diffs.mean()), max_absdiff=float(diffs.max()))
    return stats


def dense_refusal() -> str:
    """The error asking for replay on a dense model gives."""
    dense = {k: v for k, v in MOE.items() if not k.startswith("moe_") and k != "num_moe_experts"}
    model_cfg = ModelConfig(**dense)
    init_distributed(ParallelConfig(), model_cfg, seed=3)
    model = build_model(model_cfg, ParallelConfig())
    try:
        TrainerRouting.build(RoutingReplayConfig(replay="rollout"), model, None)
    except ConfigError as e:
        return str(e)
    finally:
        destroy_distributed()
    return "no error"

