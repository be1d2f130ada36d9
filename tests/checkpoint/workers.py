"""Rank functions for the cross-version checkpoint tests (top level so spawn can import them)."""
from __future__ import annotations

import json
from pathlib import Path

from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
from r1hpc.model.config import ModelConfig
from r1hpc.model.weights import VERSIONS_FILE, load_model_weights, save_model_weights
from r1hpc.train.engine import Engine, OptimConfig


def load_as_if_from_another_version(model_kw: dict, other_kw: dict, ckpt_dir: str) -> str:
    """Save a model, relabel the checkpoint as written by megatron-core 0.0.1, and load it into a
    model whose parameters differ (as a parameter renamed between releases would): returns the
    load's error as ``Type: message``."""
    init_distributed(ParallelConfig(), ModelConfig(**model_kw), seed=7)
    save_model_weights(Engine(ModelConfig(**model_kw), ParallelConfig(), OptimConfig()).module, ckpt_dir)
    versions = Path(ckpt_dir) / VERSIONS_FILE
    versions.write_text(json.dumps(dict(json.loads(versions.read_text()), megatron_core="0.0.1", torch="0.0.2")))
    try:
        load_model_weights(Engine(ModelConfig(**other_kw), ParallelConfig(), OptimConfig()).module, ckpt_dir)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    finally:
        destroy_distributed()
    return "loaded"
