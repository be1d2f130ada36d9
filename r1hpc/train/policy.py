"""The one way a policy is loaded (training, reference, eval and rollout shards, benchmarks, rollout
workers, judges): the architecture of the base (a converted checkpoint's own, else the recipe's model
sized to the tokenizer), an Engine on this rank's device, then the weights. The tokenizer it returns
carries the chat template prompts must be rendered with."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from r1hpc.data.tokenizer import TextTokenizer
from r1hpc.model.base import base_dir_of, base_model_config, load_base, prepare_tokenizer
from r1hpc.model.config import ModelConfig
from r1hpc.train.engine import Engine


def load_policy(cfg, weights: Optional[str | Path], *, trainable: bool, base_dir: Optional[str | Path] = None,
                parallel=None) -> tuple[Engine, TextTokenizer, ModelConfig]:
    """(engine, tokenizer, model config) for the base in ``base_dir`` (default: the recipe's), with
    ``weights`` loaded (None: leave them initialised, e.g. a rollout worker that loads published
    weights later). ``parallel`` overrides ``cfg.parallel`` (a single-process worker). Collective."""
    import torch

    from r1hpc.distributed import check_layout

    base_dir = Path(base_dir) if base_dir is not None else base_dir_of(cfg)
    parallel = parallel if parallel is not None else cfg.parallel
    tok, _ = prepare_tokenizer(cfg, base_dir)
    model_cfg = base_model_config(cfg, base_dir, tok)
    check_layout(parallel, model_cfg, torch.distributed.get_world_size())
    engine = Engine(model_cfg, parallel, cfg.grpo.optimizer(), trainable=trainable)  # trainable: the RL policy
    if weights is not None:
        load_base(engine, base_dir, Path(weights))
    return engine, tok, model_cfg
