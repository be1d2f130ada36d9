"""Pretrain a tiny base model on the synthetic corpus: it learns the R1-Zero format and the shape of
the worked solutions, but the corpus is systematically flawed (``data.corpus.flaw_rate``), so the
base is weak at the tasks and leaves room for RL (the R1-Zero setting). Jobs read the base this
writes through :mod:`r1hpc.model.base`."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from pathlib import Path
from typing import Callable, ClassVar, Optional

import torch

from r1hpc.config import ConfigError, to_dict
from r1hpc.data.tokenizer import TextTokenizer
from r1hpc.device import HOST
from r1hpc.model.base import base_dir_of, prepare_tokenizer
from r1hpc.model.hf.importer import META_FILE, is_converted
from r1hpc.model.weights import save_model_weights
from r1hpc.train.batching import round_up
from r1hpc.train.engine import MOVED_INTO_OPTIM, Engine, OptimConfig
from r1hpc.train.lm_loss import lm_forward_step, make_lm_batch


@dataclasses.dataclass
class PretrainConfig:
    """Next-token training of the base. ``reuse`` skips it when ``<run dir>/base`` already holds a
    base built from the same model, data and pretrain settings (checked by hash). ``optim`` defaults
    to a cosine decay over all ``steps`` down to a tenth of the rate."""

    RENAMED_KEYS: ClassVar[dict[str, tuple[str, str]]] = MOVED_INTO_OPTIM

    steps: int = 600
    batch_size: int = 32
    micro_batch_size: int = 32
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=2e-3, min_lr_ratio=0.1, warmup_steps=30, decay_steps=None, weight_decay=0.01, clip_grad=1.0))
    # train on prompt tokens too; off by default: a prompt's digits are random, and their large,
    # irreducible loss would dominate the clipped gradient of a tiny model
    prompt_loss: bool = False
    reuse: bool = True
    base_dir: Optional[str] = None

    def validate(self) -> None:
        if min(self.steps, self.batch_size, self.micro_batch_size) < 1:
            raise ConfigError("steps, batch_size and micro_batch_size must be >= 1")
        if self.batch_size % self.micro_batch_size:
            raise ConfigError(f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size "
                              f"({self.micro_batch_size})")


def base_fingerprint(cfg) -> str:
    relevant = {"model": to_dict(cfg.model), "data": to_dict(cfg.data), "pretrain": to_dict(cfg.pretrain),
                "seed": cfg.run.seed}
    relevant["pretrain"].pop("reuse", None)
    relevant["pretrain"].pop("base_dir", None)
    relevant["data"].pop("curriculum", None)  # orders the RL prompts only; the base never sees it
    relevant["data"].pop("prompts", None)  # the GRPO prompt source does not shape the base
    relevant["model"].pop("vocab_size", None)
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def base_is_ready(base_dir: Path, fingerprint: str) -> bool:
    meta = base_dir / "meta.json"
    return meta.is_file() and json.loads(meta.read_text()).get("fingerprint") == fingerprint


def encode_pairs(tok: TextTokenizer, pairs: list[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """(token ids, prompt length) per (prompt, completion) pair, EOS appended. Prompt and completion
    are encoded apart, as a rollout sees them (the prompt alone, then sampled tokens), so no BPE
    merge crosses the boundary."""
    seqs = [(tok.encode(p), tok.encode(c) + [tok.eos_id]) for p, c in pairs]
    return [(p + c, len(p)) for p, c in seqs]


def encode_corpus(tok: TextTokenizer, corpus: list[tuple[str, str]], max_len: int) -> list[tuple[list[int], int]]:
    """:func:`encode_pairs`, leaving out sequences longer than ``max_len``."""
    return [(ids, n) for ids, n in encode_pairs(tok, corpus) if len(ids) <= max_len]


def pretrain(cfg, parallel, base_dir: Path, log: Callable[[str], None] = print) -> dict:
    """Train the base and write ``base_dir/{weights/, tokenizer.json, meta.json}``. Collective."""
    from megatron.core import parallel_state

    t0 = time.perf_counter()
    rank0 = torch.distributed.get_rank() == 0
    tok, corpus = prepare_tokenizer(cfg, base_dir)
    if rank0:
        base_dir.mkdir(parents=True, exist_ok=True)
        tok.save(base_dir)
    model_cfg = dataclasses.replace(cfg.model, vocab_size=tok.vocab_size)
    p = cfg.pretrain
    engine = Engine(model_cfg, parallel, p.optim.for_stage(p.steps))
    seqs = encode_corpus(tok, corpus, model_cfg.max_seq_length + 1)
    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    rng = random.Random(cfg.run.seed)
    per_rank = p.batch_size // dp
    losses = []
    for step in range(p.steps):
        batch = rng.sample(seqs, p.batch_size)[dp_rank * per_rank:(dp_rank + 1) * per_rank]
        micro = []
        for i in range(0, len(batch), p.micro_batch_size):
            chunk = batch[i:i + p.micro_batch_size]
            width = round_up(max(len(s) for s, _ in chunk) - 1, engine.seq_multiple) + 1  # inputs = width - 1
            ids = torch.full((len(chunk), width), tok.pad_id, dtype=torch.long, device=HOST)  # the engine moves it
            mask = torch.zeros((len(chunk), width), device=HOST)
            for j, (s, n_prompt) in enumerate(chunk):
                ids[j, :len(s)] = torch.tensor(s, device=HOST)
                mask[j, 0 if p.prompt_loss else n_prompt:len(s)] = 1
            micro.append(make_lm_batch(ids, mask, vocab_size=tok.vocab_size))
        width = max(m["tokens"].shape[1] for m in micro)
        out = engine.train_step(lm_forward_step, micro, seq_length=width, micro_batch_size=p.micro_batch_size)
        if out["outputs"]:
            losses.append(sum(float(o["lm_loss"]) for o in out["outputs"]) / len(out["outputs"]))
        if rank0 and (step % 50 == 0 or step == p.steps - 1) and losses:
            log(f"[pretrain] step {step + 1}/{p.steps} loss {losses[-1]:.4f} ({time.perf_counter() - t0:.0f}s)")
    save_model_weights(engine.module, base_dir / "weights")
    meta = {"fingerprint": base_fingerprint(cfg), "steps": p.steps, "final_loss": losses[-1] if losses else None,
            "wall_s": time.perf_counter() - t0, "vocab_size": tok.vocab_size,
            "params": sum(x.numel() for x in engine.module.parameters())}
    if rank0:
        (base_dir / "meta.json").write_text(json.dumps(meta, indent=2))
    torch.distributed.barrier()
    return meta


def ensure_base(cfg, log: Callable[[str], None] = print, *, replace_other: bool = False) -> tuple[Path, dict]:
    """The run's base model: reused when ``base_dir`` holds one built from the same settings,
    pretrained otherwise. A base named by ``pretrain.base_dir`` that other settings built is
    pretrained over only with ``replace_other`` (``r1hpc pretrain``, asked to build exactly that base);
    a training run refuses, since other runs may share it. Returns (base_dir, its meta). Collective."""
    base_dir = base_dir_of(cfg)
    if cfg.pretrain.reuse and base_is_ready(base_dir, base_fingerprint(cfg)):
        log(f"[base] reusing {base_dir}")
        return base_dir, json.loads((base_dir / "meta.json").read_text())
    if is_converted(base_dir):  # a pretrained model brought in by `r1hpc convert`: never overwritten
        if not (base_dir / "tokenizer.json").is_file() and not cfg.data.tokenizer.path:
            raise ConfigError(f"pretrain.base_dir: the converted checkpoint {base_dir} has no tokenizer.json (its "
                              "source's tokenizer names no eos_token); set data.tokenizer.path to the model's tokenizer")
        log(f"[base] converted checkpoint {base_dir}")
        return base_dir, json.loads((base_dir / META_FILE).read_text())
    meta_file = base_dir / "meta.json"
    if cfg.pretrain.base_dir and meta_file.is_file() and not replace_other:
        theirs, ours = json.loads(meta_file.read_text()).get("fingerprint"), base_fingerprint(cfg)
        if theirs != ours:
            raise ConfigError(f"pretrain.base_dir: {base_dir} holds a base pretrained from other settings (fingerprint "
                              f"{theirs}, this run's {ours}: model, data, pretrain or run.seed differ); it is left as "
                              "it is: run with that base's settings, or point pretrain.base_dir at an empty folder")
    log(f"[base] pretraining a weak base on the flawed synthetic corpus -> {base_dir}")
    return base_dir, pretrain(cfg, cfg.parallel, base_dir, log=log)


def run_pretrain(cfg) -> dict:
    """``r1hpc pretrain``: the base alone, on however many ranks were launched."""
    from r1hpc.distributed import destroy_distributed, init_distributed

    env = init_distributed(cfg.parallel, cfg.model, seed=cfg.run.seed)
    try:
        base_dir, meta = ensure_base(cfg, log=print if env.rank == 0 else (lambda *a, **k: None), replace_other=True)
        if env.rank == 0:
            print(f"[base] {base_dir}: {meta['params']:,} parameters, final loss {meta['final_loss']:.4f}, "
                  f"{meta['wall_s']:.0f} s")
        return meta
    finally:
        destroy_distributed()
