"""The base a job starts from, as every job finds it (training stages, the policy loader, evaluation,
judges, rollout workers): its folder, its tokenizer, its architecture and its weights.

A base folder holds ``weights/``, ``tokenizer.json`` and ``meta.json``: written by pretraining
(:mod:`r1hpc.train.pretrain`) or by ``r1hpc convert`` (a converted checkpoint). Building one is
pretraining's job; this module only reads, so it imports no training code."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from r1hpc.checkpoint.layout import model_weights_dir
from r1hpc.config import ConfigError
from r1hpc.data.corpus import build_corpus
from r1hpc.data.tokenizer import TextTokenizer, build_tokenizer
from r1hpc.model.config import ModelConfig
from r1hpc.model.hf.importer import converted_model_config, is_converted
from r1hpc.model.weights import load_model_weights


def base_dir_of(cfg) -> Path:
    """Where the recipe's base lives: ``pretrain.base_dir``, or ``<output_dir>/<run name>/base``."""
    return Path(cfg.pretrain.base_dir) if cfg.pretrain.base_dir else Path(cfg.run.output_dir) / cfg.run.name / "base"


def prepare_tokenizer(cfg, base_dir: Path) -> tuple[TextTokenizer, list[tuple[str, str]]]:
    """The base's tokenizer (else the configured or a newly trained one). A configured tokenizer
    that differs from the base's is an error: the base was trained on other token ids."""
    corpus = build_corpus(cfg.data.mix, cfg.data.corpus, cfg.data.template)
    tok_path = base_dir / "tokenizer.json"
    configured = cfg.data.tokenizer.path
    if configured and tok_path.is_file():
        if TextTokenizer.load(configured).tokenizer.to_str() != TextTokenizer.load(tok_path).tokenizer.to_str():
            raise ConfigError(f"data.tokenizer.path: {configured} is not the tokenizer of the base in {base_dir} "
                              f"({tok_path}), whose token ids the model was trained on; drop the key to use the "
                              "base's, or point pretrain.base_dir at a base built with it")
    tok = TextTokenizer.load(tok_path) if tok_path.is_file() else build_tokenizer(cfg.data.tokenizer, corpus)
    return tok, corpus


def base_model_config(cfg, base_dir: Path, tok: TextTokenizer) -> ModelConfig:
    """The policy's architecture: a converted checkpoint's own (with the recipe's run settings), or the
    recipe's model sized to the tokenizer."""
    if not is_converted(base_dir):
        return dataclasses.replace(cfg.model, vocab_size=tok.vocab_size)
    model = converted_model_config(base_dir, cfg.model)
    if tok.vocab_size > model.vocab_size:
        raise ConfigError(f"{base_dir}: the tokenizer has {tok.vocab_size} tokens, the model's vocabulary only "
                          f"{model.vocab_size}")
    return model


def start_weights(cfg, base_dir: Path) -> Path:
    """The weights a job starts from: ``run.init_weights`` when set, else the base's own."""
    if not cfg.run.init_weights:
        return base_dir / "weights"
    path = model_weights_dir(cfg.run.init_weights)
    if not path.is_dir():
        raise ConfigError(f"run.init_weights: {path} is not a folder of megatron weights (an earlier stage's "
                          "output: <run>/weights, a checkpoint, or <run>/checkpoints for its latest)")
    return path


def load_base(engine, base_dir: Path, weights: Optional[Path] = None) -> None:
    """Load ``weights`` (default: the base's) into ``engine`` (a :class:`r1hpc.train.engine.Engine`)."""
    load_model_weights(engine.module, weights or base_dir / "weights")
    if engine.optimizer is not None:  # bf16/fp16: the fp32 main copies were taken at construction
        engine.optimizer.reload_model_params()
