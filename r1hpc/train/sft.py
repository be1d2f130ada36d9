"""Supervised fine-tuning on (question, response) JSONL: the cold start of DeepSeek-R1, the SFT on
rejection-sampled data, and distillation into a student all run this trainer.

The loss is next-token cross-entropy on the response tokens (and the EOS after them) only, averaged
over every such token of an optimizer step across micro-batches and data-parallel ranks. With
``packing`` several examples share a row up to ``model.max_seq_length``: each attends only to
itself (a block-diagonal causal mask per row) and its position ids restart at 0. megatron's RoPE
reads positions from the row index, but rotary attention depends only on the distance between
query and key, which the mask keeps inside one example, so a packed example's loss equals its
loss alone in a row (tests/train/test_sft.py checks this in fp32).
"""
from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path
from typing import Callable, ClassVar, Optional, Sequence

import torch

from r1hpc.config import ConfigError, dump_yaml
from r1hpc.data.sft_data import file_sha256, load_sft_examples
from r1hpc.data.templates import render_prompt
from r1hpc.data.tokenizer import TextTokenizer
from r1hpc.device import HOST, collective_device
from r1hpc.model.base import base_dir_of, base_model_config, load_base, prepare_tokenizer, start_weights
from r1hpc.monitor.metrics import MetricsLogger
from r1hpc.train.batching import round_up
from r1hpc.train.engine import MOVED_INTO_OPTIM, Engine, OptimConfig, last_stage_broadcast
from r1hpc.train.lm_loss import lm_forward_step
from r1hpc.train.pretrain import encode_pairs

Encoded = tuple[list[int], int]  # (prompt + response + EOS token ids, prompt length)


@dataclasses.dataclass
class SFTConfig:
    """``batch_size`` examples per optimizer step (all data-parallel ranks together; the last step of
    an epoch takes what is left); ``micro_batch_size`` rows per micro-batch on each rank (a row
    holds one example, or several with ``packing``). ``optim`` defaults to a cosine decay over all
    steps down to a tenth of the rate. ``max_examples`` keeps the first N examples read (null: all)."""

    RENAMED_KEYS: ClassVar[dict[str, tuple[str, str]]] = MOVED_INTO_OPTIM

    data: list[str] = dataclasses.field(default_factory=list)
    epochs: int = 1
    batch_size: int = 32
    micro_batch_size: int = 8
    optim: OptimConfig = dataclasses.field(
        default_factory=lambda: OptimConfig(lr=1e-4, min_lr_ratio=0.1, decay_steps=None))
    packing: bool = True
    max_examples: Optional[int] = None

    def validate(self) -> None:
        if min(self.epochs, self.batch_size, self.micro_batch_size) < 1:
            raise ConfigError("epochs, batch_size and micro_batch_size must be >= 1")
        if self.max_examples is not None and self.max_examples < 1:
            raise ConfigError("max_examples must be >= 1 (or null)")


def encode_examples(tok: TextTokenizer, examples, template, max_len: int) -> tuple[list[Encoded], int]:
    """(kept sequences, number dropped): each question rendered with the run's template, prompt and
    response encoded apart (as pretraining does), EOS appended; sequences longer than ``max_len``
    tokens are dropped, never truncated."""
    pairs = [(render_prompt(e.question, template, tok.chat_template), e.response) for e in examples]
    encoded = encode_pairs(tok, pairs)
    kept = [s for s in encoded if len(s[0]) <= max_len]
    return kept, len(encoded) - len(kept)


def pack_examples(lengths: Sequence[int], capacity: int, packing: bool = True) -> list[list[int]]:
    """Rows of example indices, first-fit in the given order: an example of ``n`` tokens fills
    ``n - 1`` input positions of a row of ``capacity``. Without packing, one example per row."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i, n in enumerate(lengths):
        need = n - 1
        if need > capacity:
            raise ValueError(f"example {i} needs {need} positions, the row holds {capacity}")
        slot = next((r for r, room in enumerate(free) if room >= need), None) if packing else None
        if slot is None:
            rows.append([])
            free.append(capacity)
            slot = len(rows) - 1
        rows[slot].append(i)
        free[slot] -= need
    return rows


def packed_batch(rows: list[list[Encoded]], pad_id: int, width_multiple: int = 1, width: int = 0) -> dict:
    """[b, s] tokens, labels, loss mask (the labels that are response tokens or EOS) and position
    ids restarting per example, plus the [b, 1, s, s] attention mask (True = masked): causal and
    inside one example. ``s`` is the longest row (at least ``width``) rounded up to
    ``width_multiple``; padding attends only to padding and carries no loss."""
    used = max((sum(len(ids) - 1 for ids, _ in row) for row in rows), default=1)
    s = round_up(max(used, width, 1), width_multiple)
    b = len(rows)
    tokens = torch.full((b, s), pad_id, dtype=torch.long, device=HOST)  # host staging: the engine moves it
    labels = torch.full((b, s), pad_id, dtype=torch.long, device=HOST)
    loss_mask = torch.zeros((b, s), device=HOST)
    positions = torch.zeros((b, s), dtype=torch.long, device=HOST)
    segment = torch.full((b, s), -1, dtype=torch.long, device=HOST)
    for r, row in enumerate(rows):
        at = 0
        for k, (ids, n_prompt) in enumerate(row):
            n = len(ids) - 1
            seq = torch.tensor(ids, dtype=torch.long, device=HOST)
            tokens[r, at:at + n], labels[r, at:at + n] = seq[:-1], seq[1:]
            loss_mask[r, at + n_prompt - 1:at + n] = 1  # label j is token j + 1: from the first response token
            positions[r, at:at + n] = torch.arange(n, device=HOST)
            segment[r, at:at + n] = k
            at += n
        positions[r, at:] = torch.arange(s - at, device=HOST)
    causal = torch.ones(s, s, dtype=torch.bool, device=HOST).triu(1)
    attention_mask = (segment[:, :, None] != segment[:, None, :]) | causal
    return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask, "position_ids": positions,
            "attention_mask": attention_mask[:, None]}


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The seeded shuffle of epoch ``epoch``: the same on every rank and in every run."""
    order = list(range(n))
    random.Random(f"sft:{seed}:{epoch}").shuffle(order)
    return order


def step_batches(n: int, cfg: SFTConfig, seed: int) -> list[tuple[int, list[int]]]:
    """(epoch, example indices) per optimizer step."""
    out = []
    for epoch in range(cfg.epochs):
        order = epoch_order(n, seed, epoch)
        out += [(epoch, order[i:i + cfg.batch_size]) for i in range(0, n, cfg.batch_size)]
    return out


def _dp_sum(values: list[float]) -> list[float]:
    from megatron.core import parallel_state

    group = parallel_state.get_data_parallel_group()
    t = torch.tensor(values, dtype=torch.float64, device=collective_device(group))
    if parallel_state.get_data_parallel_world_size() > 1:
        torch.distributed.all_reduce(t, group=group)
    return t.tolist()


def _dp_max(value: int) -> int:
    from megatron.core import parallel_state

    group = parallel_state.get_data_parallel_group()
    t = torch.tensor([value], dtype=torch.long, device=collective_device(group))
    if parallel_state.get_data_parallel_world_size() > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=group)
    return int(t.item())


def sft_step(engine: Engine, seqs: list[Encoded], cfg: SFTConfig, capacity: int, pad_id: int,
             vocab_size: int) -> dict[str, float]:
    """One optimizer step on this rank's share ``seqs`` of the step's examples. Collective: every
    rank runs as many micro-batches as the busiest one (the others get zero-loss filler rows).
    Returns the step's token-mean loss, response tokens and examples over all ranks."""
    from megatron.core import parallel_state

    rows = [[seqs[i] for i in row] for row in pack_examples([len(ids) for ids, _ in seqs], capacity, cfg.packing)]
    chunks = [rows[i:i + cfg.micro_batch_size] for i in range(0, len(rows), cfg.micro_batch_size)]
    num_micro = _dp_max(len(chunks))
    chunks += [[[]] for _ in range(num_micro - len(chunks))]  # one empty row: padding, no loss
    local_tokens = sum(len(ids) - n_prompt for ids, n_prompt in seqs)
    tokens, examples = _dp_sum([local_tokens, len(seqs)])
    # megatron divides each micro-batch's loss by their count and DDP averages gradients over the
    # data-parallel ranks: undo both so the gradient is that of the mean over all response tokens
    scale = num_micro * parallel_state.get_data_parallel_world_size() / max(tokens, 1)
    width = max(sum(len(ids) - 1 for ids, _ in row) for chunk in chunks for row in chunk) if seqs else 1
    micro = [{**packed_batch(chunk, pad_id, engine.seq_multiple, width), "loss_scale": scale, "vocab_size": vocab_size}
             for chunk in chunks]
    out = engine.train_step(lm_forward_step, micro, seq_length=micro[0]["tokens"].shape[1],
                            micro_batch_size=cfg.micro_batch_size)
    local_sum = [sum(float(o["lm_loss_sum"]) for o in out["outputs"])] if out["outputs"] else None
    (loss_sum,) = _dp_sum(last_stage_broadcast(local_sum, 1))
    return {"loss": loss_sum / max(tokens, 1), "tokens": int(tokens), "examples": int(examples), "lr": out["lr"],
            "grad_norm": out["grad_norm"]}


def check_packing_supported(cfg, model_cfg) -> None:
    """Transformer Engine's causal attention ignores a dense mask, so packed rows would attend across
    examples there; packing needs the local layer spec until packed_seq_params (THD) is wired in."""
    from r1hpc.model.provider import select_transformer_impl

    if cfg.sft.packing and select_transformer_impl(model_cfg) == "transformer_engine":
        raise ConfigError("sft.packing: Transformer Engine attention ignores the block-diagonal mask packing needs; "
                          "set model.transformer_impl=local or sft.packing=false")


def check_has_data(cfg: SFTConfig) -> None:
    """Not in ``validate``: the same recipe also drives `r1hpc cold-start`, which writes the data."""
    if not cfg.data:
        raise ConfigError("sft.data: no SFT data files given (e.g. sft.data=[cold_start.jsonl])")


def check_no_pipeline(parallel) -> None:
    """Packed micro-batches vary in rows and width; megatron's pipeline sends fixed shapes."""
    if parallel.pipeline_model_parallel_size > 1:
        raise ConfigError("parallel.pipeline_model_parallel_size: SFT does not support pipeline parallelism yet; "
                          "use TP/DP (and EP for MoE)")


def _start(cfg) -> tuple:
    """(base directory, weights to start from, tokenizer, model config), the model checked against
    the parallel layout and against packing."""
    from r1hpc.distributed import check_layout

    base_dir = base_dir_of(cfg)
    init = start_weights(cfg, base_dir)
    if not init.is_dir():
        raise ConfigError(f"no weights to start from at {init}: run `r1hpc pretrain` first or set run.init_weights")
    tok, _ = prepare_tokenizer(cfg, base_dir)
    model_cfg = base_model_config(cfg, base_dir, tok)
    check_layout(cfg.parallel, model_cfg, torch.distributed.get_world_size())
    check_packing_supported(cfg, model_cfg)
    return base_dir, init, tok, model_cfg


def _encode_fitting(tok: TextTokenizer, examples: list, template, max_seq_length: int,
                    log: Callable[[str], None]) -> tuple[list[Encoded], int]:
    """The examples that fit ``max_seq_length + 1`` tokens, encoded, and how many did not (said in the log)."""
    seqs, dropped = encode_examples(tok, examples, template, max_seq_length + 1)
    if dropped:
        log(f"[sft] dropped {dropped} of {len(examples)} examples longer than model.max_seq_length + 1 = "
            f"{max_seq_length + 1} tokens")
    if not seqs:
        raise ConfigError(f"sft.data: none of the {len(examples)} examples fits model.max_seq_length = "
                          f"{max_seq_length}")
    return seqs, dropped


def _open_run_dir(cfg, run_dir: Path, rank0: bool) -> MetricsLogger:
    """A fresh metrics log and the config beside it (written by rank 0; every rank waits for it)."""
    if rank0:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, run_dir / "config.yaml")
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    torch.distributed.barrier()
    return MetricsLogger(run_dir, enabled=rank0)


def _train(engine: Engine, seqs: list[Encoded], plan: list, s: SFTConfig, capacity: int, tok: TextTokenizer,
           logger: MetricsLogger, log: Callable[[str], None], t0: float) -> tuple[int, dict]:
    """Every step of ``plan`` (this data-parallel rank's share of each batch); returns the response
    tokens trained on and the last step's metrics."""
    from megatron.core import parallel_state

    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    total_tokens, metrics = 0, {}
    for step, (epoch, batch) in enumerate(plan, start=1):
        metrics = sft_step(engine, [seqs[i] for i in batch[dp_rank::dp]], s, capacity, tok.pad_id, tok.vocab_size)
        metrics["epoch"] = epoch
        total_tokens += metrics["tokens"]
        logger.log(step, metrics)
        if step == 1 or step % 20 == 0 or step == len(plan):
            log(f"[sft] step {step}/{len(plan)} epoch {epoch} loss {metrics['loss']:.4f} "
                f"({time.perf_counter() - t0:.0f}s)")
    logger.close()
    return total_tokens, metrics


def sft(cfg, log: Callable[[str], None] = print) -> dict:
    """Train ``start_weights`` on ``cfg.sft.data`` and write ``<run_dir>/{weights/, tokenizer.json,
    metrics.jsonl, sft_meta.json, config.yaml}``. Collective; distributed must be initialised."""
    from r1hpc.model.weights import save_model_weights

    t0 = time.perf_counter()
    s = cfg.sft
    check_has_data(s)
    check_no_pipeline(cfg.parallel)
    examples = load_sft_examples(s.data)[:s.max_examples]  # a bad line stops the job before any model work
    rank0 = torch.distributed.get_rank() == 0
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    base_dir, init, tok, model_cfg = _start(cfg)
    seqs, dropped = _encode_fitting(tok, examples, cfg.data.template, model_cfg.max_seq_length, log)
    plan = step_batches(len(seqs), s, cfg.run.seed)
    engine = Engine(model_cfg, cfg.parallel, s.optim.for_stage(len(plan)))
    load_base(engine, base_dir, init)
    log(f"[sft] {len(seqs)} examples x {s.epochs} epochs = {len(plan)} steps from {init}")

    logger = _open_run_dir(cfg, run_dir, rank0)
    total_tokens, metrics = _train(engine, seqs, plan, s, model_cfg.max_seq_length, tok, logger, log, t0)
    save_model_weights(engine.module, run_dir / "weights")
    meta = {"examples": len(seqs), "dropped_too_long": dropped, "epochs": s.epochs, "steps": len(plan),
            "tokens": total_tokens, "final_loss": metrics["loss"], "wall_s": time.perf_counter() - t0,
            "init_weights": str(init), "base_dir": str(base_dir), "packing": s.packing,
            "data": [{"path": str(p), "sha256": file_sha256(p)} for p in s.data]}
    if rank0:
        tok.save(run_dir)
        (run_dir / "sft_meta.json").write_text(json.dumps(meta, indent=2))
    torch.distributed.barrier()
    return meta


def run_sft(cfg) -> dict:
    """``r1hpc sft``: the SFT job on however many ranks were launched."""
    from r1hpc.distributed import destroy_distributed, init_distributed

    check_has_data(cfg.sft)  # before megatron starts
    check_no_pipeline(cfg.parallel)
    env = init_distributed(cfg.parallel, cfg.model, seed=cfg.run.seed)
    try:
        meta = sft(cfg, log=print if env.rank == 0 else (lambda *a, **k: None))
        if env.rank == 0:
            print(f"[sft] {Path(cfg.run.output_dir) / cfg.run.name}: {meta['steps']} steps, final loss "
                  f"{meta['final_loss']:.4f}, {meta['wall_s']:.0f} s")
        return meta
    finally:
        destroy_distributed()
