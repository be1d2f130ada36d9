"""Rank functions for the multi-process GRPO trainer tests (top level so spawn can import them)."""
from __future__ import annotations

from types import SimpleNamespace

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
from r1hpc.rewards.shape import ResponseShapeScorer
from r1hpc.rollout.generate import RolloutConfig
from r1hpc.train.engine import Engine, OptimConfig
from r1hpc.train.grpo import GRPOConfig, GRPOTrainer
from r1hpc.train.grpo_update import _vocab_start
from r1hpc.train.lm_loss import lm_forward_step, make_lm_batch, position_ids

MODEL = dict(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, max_seq_length=64)
MOE = dict(MODEL, num_moe_experts=4, moe_router_topk=2, moe_ffn_hidden_size=64)
MIX = TaskMixConfig(tasks=["arithmetic"], difficulty={"arithmetic": 2}, seed=0)
TEMPLATE = TemplateConfig(kind="short")


def grpo_run(model_kw: dict, parallel_kw: dict, ckpt_dir: str, mode: str, algo_kw: dict, steps: int = 2,
             routing_kw: dict | None = None, grpo_kw: dict | None = None) -> dict:
    """Two GRPO steps (rollout with TP-identical sampling, old and reference log-probs, two mini-batch
    updates) from weights saved by the single-process run ('save') or resharded from it ('load').
    ``routing_kw``: a RoutingReplayConfig's keys (None: no routing replay or agreement); ``grpo_kw``:
    GRPOConfig keys beyond the two mini-batches of four rows.
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
                          grpo=GRPOConfig(mini_batches=2, micro_batch_size=4, **(grpo_kw or {})),
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


def update_probe(engine: Engine, algo: AlgoConfig, vocab_size: int, micro_batch_size: int):
    """A GRPOTrainer with ``engine`` as policy and reference, and a function of one micro-batch that
    returns its log-prob pass and the loss and every parameter's gradient of one GRPO update on it
    (the trainer's own forward steps through megatron's schedule; no optimizer step)."""
    trainer = GRPOTrainer(engine, engine, tokenizer=SimpleNamespace(vocab_size=vocab_size), scorer=None, algo=algo,
                          rollout=RolloutConfig(prompts_per_step=1), grpo=GRPOConfig(micro_batch_size=micro_batch_size),
                          render=None, problems=iter(()), seed=0)

    def measure(mb: dict) -> dict:
        losses = []

        def recording_step(data_iterator, model):
            output, loss_func = trainer.updater._loss_step(_vocab_start(engine), 1.0, data_iterator, model)

            def recorded(out):
                loss, stats = loss_func(out)
                losses.append(loss.detach().clone())
                return loss, stats
            return output, recorded

        logp = trainer.updater.forward_logp(engine, [dict(mb)])[0]
        for m in engine.model:
            m.zero_grad_buffer()
        engine.run_schedule(recording_step, [mb], seq_length=mb["tokens"].shape[1],
                            micro_batch_size=mb["tokens"].shape[0], forward_only=False)
        grads = {name: p.main_grad.detach().clone() for name, p in engine.module.named_parameters()}
        return {"loss": losses[-1], "logp": logp, "grads": grads}
    return trainer, measure


def lm_loss_vs_real_vocabulary(vocab_size: int) -> dict:
    """The pretraining loss of one micro-batch through megatron's schedule, and plain-torch cross
    entropy of the same logits over the real vocabulary and over megatron's padded one."""
    model_cfg = ModelConfig(vocab_size=vocab_size, num_layers=1, hidden_size=32, ffn_hidden_size=64,
                            num_attention_heads=2, max_seq_length=16)
    init_distributed(ParallelConfig(), model_cfg, seed=3)
    engine = Engine(model_cfg, ParallelConfig(), OptimConfig(), trainable=False)
    seqs = torch.randint(0, vocab_size, (3, 13), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(seqs, dtype=torch.float)
    mask[0, :5] = 0  # a prompt without loss
    batch = make_lm_batch(seqs, mask, vocab_size=vocab_size)
    (out,) = engine.run_schedule(lm_forward_step, [batch], seq_length=12, micro_batch_size=3, forward_only=True)
    with torch.no_grad():
        tokens = batch["tokens"]
        logits = engine.module(tokens, position_ids(tokens), causal_attention_mask(12, tokens.device)).float()

    def masked_ce(lg: torch.Tensor) -> float:
        ce = torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), batch["labels"].reshape(-1),
                                               reduction="none")
        return float((ce * batch["loss_mask"].reshape(-1)).sum() / batch["loss_mask"].sum())

    result = {"padded_vocab": logits.shape[-1], "lm_loss": float(out["lm_loss"]),
              "real": masked_ce(logits[..., :vocab_size]), "padded": masked_ce(logits)}
    destroy_distributed()
    return result


class ParityScorer:
    """A coarse reward of the response text (its length's parity), so that some groups of a
    random-init model score alike (zero std) and others do; keeps every score it returned."""

    def __init__(self) -> None:
        self.scored: list[dict] = []

    def score_batch(self, texts, problems):
        scores = [{"total": float(len(t) % 2), "accuracy": float(len(t) % 3 == 0)} for t in texts]
        self.scored += scores
        return scores


def dp_metrics_run() -> dict:
    """Data parallel over two ranks, each with its own prompts: this rank's rollout batch (rewards,
    response lengths, token entropies, truncation) with the reduced rollout metrics of that batch,
    then a whole train_step with the rewards it scored and the metrics it returned."""
    corpus = build_corpus(MIX, CorpusConfig(size=200), TEMPLATE)
    tok = build_tokenizer(TokenizerConfig(vocab_size=300, train_examples=200), corpus)
    model_cfg = ModelConfig(vocab_size=tok.vocab_size, **dict(MODEL, max_seq_length=96))
    init_distributed(ParallelConfig(), model_cfg, seed=3)
    policy = Engine(model_cfg, ParallelConfig(), OptimConfig(lr=1e-3))
    scorer = ParityScorer()
    # 48 new tokens: a random-init model ends about one response in six early (EOS is 1 of ~300 ids)
    trainer = GRPOTrainer(policy, None, tokenizer=tok, scorer=scorer, algo=AlgoConfig(beta=0.0),
                          rollout=RolloutConfig(group_size=4, prompts_per_step=16, max_new_tokens=48),
                          grpo=GRPOConfig(mini_batches=2, micro_batch_size=4),
                          render=lambda q: render_prompt(q, TEMPLATE), problems=stream(MIX, "train", seed=0), seed=5)
    batch = trainer.rollout_and_score()
    rewards = trainer.rewards(batch, None)
    local = {"rewards": rewards.tolist(), "lengths": [len(s.response_ids) for s in batch.samples],
             "entropies": torch.cat([s.entropies for s in batch.samples]).tolist(),
             "truncated": [s.truncated for s in batch.samples],
             "metrics": trainer.rollout_metrics(batch, rewards).reduce()}
    scorer.scored.clear()
    step = trainer.train_step()
    destroy_distributed()
    return {"batch": local, "step_rewards": [s["total"] for s in scorer.scored], "step": step}
