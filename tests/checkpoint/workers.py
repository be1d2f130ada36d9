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


def load_with_each_file_cut(model_kw: dict, ckpt_dir: str) -> dict[str, str]:
    """Save a model, then for each file of the checkpoint in turn cut it to half its size (and the
    index, ``.metadata``, also to nothing) and load: file variant -> ``Type: message`` of the load's
    error (the file restored after each); "intact" -> the result of loading the restored checkpoint."""
    init_distributed(ParallelConfig(), ModelConfig(**model_kw), seed=7)
    model = Engine(ModelConfig(**model_kw), ParallelConfig(), OptimConfig()).module
    save_model_weights(model, ckpt_dir)
    errors = {}
    variants = [(p.name, len(p.read_bytes()) // 2) for p in sorted(Path(ckpt_dir).iterdir())] + [(".metadata", 0)]
    for name, size in variants:
        path = Path(ckpt_dir) / name
        data = path.read_bytes()
        path.write_bytes(data[:size])
        try:
            load_model_weights(model, ckpt_dir)
            errors[f"{name}@{size}"] = "loaded"
        except Exception as e:
            errors[f"{name}@{size}"] = f"{type(e).__name__}: {e}"
        finally:
            path.write_bytes(data)
    load_model_weights(model, ckpt_dir)
    errors["intact"] = "loaded"
    destroy_distributed()
    return errors
