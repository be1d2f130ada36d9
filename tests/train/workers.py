"""Rank functions for the multi-process GRPO trainer tests (top level so spawn can import them)."""
from __future__ import annotations

import torch

from r1hpc.algo.loss import AlgoConfig
from r1hpc.data.corpus import CorpusConfig, build_corpus
from r1hpc.data.mix import TaskMixConfig, stream
from r1hpc.data.templates import TemplateConfig, render_prompt
from r1hpc.data.tokenizer import TokenizerConfig, build_tokenizer
from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
from r1hpc.model.config import ModelConfig
from r1hpc.model.provider import causal_attention_mask, sequence_parallel_off
from r1hpc.model.routing_replay import RoutingReplayConfig
from r1hpc.model.weights import load_model_weights, save_model_weights
from r1hpc.rollout.generate import RolloutConfig
from r1hpc.train.engine import Engine, OptimConfig
from r1hpc.train.grpo import GRPOConfig, GRPOTrainer

MODEL = dict(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, max_seq_length=64)
MOE = dict(MODEL, num_moe_experts=4, moe_router_topk=2, moe_ffn_hidden_size=64)
MIX = TaskMixConfig(tasks=["arithmetic"], difficulty={"arithmetic": 2}, seed=0)
TEMPLATE = TemplateConfig(kind="short")


class ResponseShapeScorer:
    """A reward that varies between the responses of a random-init model (the real rewards would be
    all zero there, leaving nothing to learn): a deterministic function of the response text."""

    def score_batch(self, texts, problems):
        return [{"total": (len(t) % 5) / 4, "accuracy": float(len(t) % 2), "format": 0.0} for t in texts]


def grpo_run(model_kw: dict, parallel_kw: dict, ckpt_dir: str, mode: str, algo_kw: dict, steps: int = 2,
             routing_kw: dict | None = None) -> dict:
    """Two GRPO steps (rollout with TP-identical sampling, old and reference log-probs, two mini-batch
    updates) from weights saved by the single-process run ('save') or resharded from it ('load').
    ``routing_kw``: a RoutingReplayConfig's keys (None: no routing replay or agreement).
    Returns every non-timing metric per step and the logits of a fixed sequence afterwards."""
    corpus = build_corpus(MIX, CorpusConfig(size=200), TEMPLATE)
    tok = build_tokenizer(TokenizerConfig(vocab_size=300, train_examples=200), corpus)
    model_cfg = ModelConfig(vocab_size=tok.vocab_size, **model_kw)
    parallel_cfg = ParallelConfig(**parallel_kw)
    init_distributed(parallel_cfg, model_cfg, seed=3)
    # Adam's eps of 1e-3 keeps small-gradient updates linear in the gradient: with the usual 1e-8
    # the first step moves every parameter by about +-lr whatever its gradient's size, so a sign
    # flip from fp32 reduction order in a near-zero gradient would become a full-size difference
    policy = Engine(model_cfg, parallel_cfg, OptimConfig(lr=1e-3, adam_eps=1e-3))
    (save_model_weights if mode == "save" else load_model_weights)(policy.module, ckpt_dir)
    reference = Engine(model_cfg, parallel_cfg, OptimConfig(), trainable=False)
    load_model_weights(reference.module, ckpt_dir)
    algo = AlgoConfig(**algo_kw)
    trainer = GRPOTrainer(policy, reference, tokenizer=tok, scorer=ResponseShapeScorer(), algo=algo,
                          rollout=RolloutConfig(group_size=4, prompts_per_step=4, max_new_tokens=16),
                          grpo=GRPOConfig(mini_batches=2, micro_batch_size=4),
                          render=lambda q: render_prompt(q, TEMPLATE), problems=stream(MIX, "train", seed=0), seed=5,
                          routing=RoutingReplayConfig(**routing_kw) if routing_kw is not None else None)
    before = _probe_logits(policy.module, tok)
    metrics = []
    for _ in range(steps):
        m = trainer.train_step()
        metrics.append({k: v for k, v in m.items() if not k.startswith(("timing/", "perf/tokens_per_s"))})
    after = _probe_logits(policy.module, tok)
    destroy_distributed()
    return {"metrics": metrics, "logits_before": before, "logits": after}


@torch.no_grad()
def _probe_logits(model, tok) -> torch.Tensor:
    """Full-vocabulary logits of a fixed sequence (gathered over TP ranks)."""
    probe = torch.tensor([tok.encode(render_prompt("Compute 12 + 34", TEMPLATE) + " <think> 2+4=6")])
    was_training = model.training
    model.eval()
    with sequence_parallel_off(model):
        logits = model(probe, torch.arange(probe.shape[1])[None], causal_attention_mask(probe.shape[1]),
                       runtime_gather_output=True)
    model.train(was_training)
    return logits[..., :tok.vocab_size].clone()
