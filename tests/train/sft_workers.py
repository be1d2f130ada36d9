"""Rank functions for the SFT tests (top level so spawn can import them)."""
from __future__ import annotations

import random
from pathlib import Path

import torch

from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
from r1hpc.model.config import ModelConfig
from r1hpc.model.provider import causal_attention_mask, sequence_parallel_off
from r1hpc.model.weights import load_model_weights, save_model_weights
from r1hpc.train.engine import Engine, OptimConfig
from r1hpc.train.sft import SFTConfig, pack_examples, packed_batch, sft_step

DENSE = ModelConfig(vocab_size=64, num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4,
                    max_seq_length=48)


def _one_thread() -> None:
    """One intra-op thread per rank: tests/multiproc.py sets OMP_NUM_THREADS only after torch is
    imported, when it no longer counts, and two ranks of two threads each on two shared cores ran
    the learning test 7x slower (measured: 90 s against 12 s)."""
    torch.set_num_threads(1)


def random_examples(n: int, seed: int, vocab: int = 64, max_len: int = 20) -> list[tuple[list[int], int]]:
    """(ids, prompt length) with 2..max_len tokens and a prompt of 1..len-1 of them."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(2, max_len)
        out.append(([rng.randrange(1, vocab) for _ in range(length)], rng.randint(1, length - 1)))
    return out


def _per_token_loss(model, batch: dict, mask: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(batch["tokens"], batch["position_ids"], batch["attention_mask"] if mask is None else mask,
                     labels=batch["labels"])


def packing_vs_unpacked(model) -> dict:
    """Per-token losses of every example in packed rows, alone in a row, and in packed rows with a
    plain causal mask (the control that shows the mask matters). fp32."""
    model.eval()
    examples = random_examples(24, seed=5)
    rows = pack_examples([len(ids) for ids, _ in examples], DENSE.max_seq_length)
    batch = packed_batch([[examples[i] for i in row] for row in rows], pad_id=0)
    packed = _per_token_loss(model, batch)
    leaky = _per_token_loss(model, batch, causal_attention_mask(batch["tokens"].shape[1]))
    alone, in_packed, in_leaky = [], [], []
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            n = len(examples[i][0]) - 1
            single = packed_batch([[examples[i]]], pad_id=0)
            alone.append(_per_token_loss(model, single)[0, :n])
            in_packed.append(packed[r, at:at + n])
            in_leaky.append(leaky[r, at:at + n])
            at += n
    return {"rows": len(rows), "alone": torch.cat(alone), "packed": torch.cat(in_packed), "leaky": torch.cat(in_leaky)}


def parallel_sft_steps(parallel_kw: dict, ckpt_dir: str, mode: str) -> dict:
    """Three SFT steps on packed rows from weights saved by the single-process run ('save') or
    resharded from it ('load'); per-step metrics and the logits of a probe afterwards. The
    single-process run also checks packing against unpacked rows (one spawn fewer)."""
    _one_thread()
    parallel = ParallelConfig(**parallel_kw)
    init_distributed(parallel, DENSE, seed=3)
    from megatron.core import parallel_state

    # Adam's eps of 1e-3 keeps the first updates linear in the gradient (as tests/train/workers.py)
    engine = Engine(DENSE, parallel, OptimConfig(lr=1e-3, adam_eps=1e-3))
    (save_model_weights if mode == "save" else load_model_weights)(engine.module, ckpt_dir)
    if mode == "load":
        engine.optimizer.reload_model_params()
    cfg = SFTConfig(batch_size=12, micro_batch_size=2)
    examples = random_examples(36, seed=9)
    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    metrics = []
    for step in range(3):
        batch = examples[step * 12:(step + 1) * 12]
        metrics.append(sft_step(engine, batch[dp_rank::dp], cfg, DENSE.max_seq_length, pad_id=0,
                                vocab_size=DENSE.vocab_size))
    probe = torch.tensor([examples[0][0]])
    model = engine.module
    model.eval()
    with torch.no_grad(), sequence_parallel_off(model):
        logits = model(probe, torch.arange(probe.shape[1])[None], causal_attention_mask(probe.shape[1]),
                       runtime_gather_output=True)
    packing = packing_vs_unpacked(model) if mode == "save" else None
    destroy_distributed()
    return {"metrics": metrics, "logits": logits[..., :DENSE.vocab_size].clone(), "packing": packing}


def cold_start_learning(cfg_path: str, overrides: list[str], n_eval: int) -> dict:
    """The whole cold-start path in one process (one spawn): a base with the recipe's trained
    tokenizer and random weights (it writes nothing like the cold-start form), cold-start data from
    the builder, the SFT trainer, and greedy held-out responses before and after scored by the
    cold-start format reward."""
    from r1hpc.data.cold_start import build_cold_start
    from r1hpc.model.base import base_dir_of, base_model_config, prepare_tokenizer
    from r1hpc.run_config import load_run_config
    from r1hpc.train.sft import sft

    _one_thread()
    cfg = load_run_config(cfg_path, overrides)
    init_distributed(cfg.parallel, cfg.model, seed=cfg.run.seed)
    base_dir = base_dir_of(cfg)
    tok, _ = prepare_tokenizer(cfg, base_dir)
    tok.save(base_dir)
    engine = Engine(base_model_config(cfg, base_dir, tok), cfg.parallel, cfg.sft.optim, trainable=False)
    save_model_weights(engine.module, base_dir / "weights")
    before = _format_scores(cfg, tok, engine.module, n_eval)
    for path in cfg.sft.data:
        build_cold_start(cfg, cfg.sft.max_examples, path)
    meta = sft(cfg, log=lambda *a: None)
    load_model_weights(engine.module, Path(cfg.run.output_dir) / cfg.run.name / "weights")
    after = _format_scores(cfg, tok, engine.module, n_eval)
    destroy_distributed()
    return {"meta": meta, "before": before, "after": after}


def _format_scores(cfg, tok, model, n: int) -> dict:
    """Greedy responses to ``n`` held-out prompts scored by the cold-start format reward and accuracy."""
    import dataclasses

    from r1hpc.data.mix import heldout_set
    from r1hpc.data.templates import render_prompt
    from r1hpc.rewards.registry import RewardScorer
    from r1hpc.rollout.generate import generate, response_text

    problems = heldout_set(cfg.data.mix, n)
    prompts = [tok.encode(render_prompt(p.question, cfg.data.template, tok.chat_template)) for p in problems]
    samples = generate(model, prompts, vocab_size=tok.vocab_size, stop_ids=tok.stop_token_ids, temperature=0.0,
                       max_new_tokens=cfg.rollout.max_new_tokens, max_seq_length=cfg.model.max_seq_length)
    texts = [response_text(tok, s) for s in samples]
    rewards = dataclasses.replace(cfg.rewards, workers=1,
                                  format=dataclasses.replace(cfg.rewards.format, style="cold_start"))
    with RewardScorer(rewards) as scorer:
        scores = scorer.score_batch(texts, problems)
    return {"format": sum(s["format"] for s in scores) / n, "accuracy": sum(s["accuracy"] for s in scores) / n,
            "example": texts[0]}
