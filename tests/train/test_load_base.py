"""Loading a base into an engine whose optimizer already exists must reach the optimizer's fp32
main copies too: with bf16 parameters megatron keeps those copies, taken when the optimizer was
built, and writes them back into the model after every step. Stale copies would silently put the
random initialisation back after the first update. (megatron's mixed-precision optimizer sorts
parameters by CUDA type names; on a CPU r1hpc.model.cpu_compat names CPU tensors so.)"""
from pathlib import Path

import pytest
import torch

from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
from r1hpc.model.base import load_base
from r1hpc.model.config import ModelConfig
from r1hpc.model.weights import save_model_weights
from r1hpc.train.engine import Engine, OptimConfig
from r1hpc.train.lm_loss import lm_forward_step, make_lm_batch
from tests.multiproc import run_workers

MODEL = ModelConfig(vocab_size=128, num_layers=1, hidden_size=32, ffn_hidden_size=64, num_attention_heads=2,
                    max_seq_length=16, params_dtype="bf16")


def _first_step_keeps_loaded_weights(base_dir: str) -> float:
    init_distributed(ParallelConfig(), MODEL, seed=1)
    source = Engine(MODEL, ParallelConfig(), OptimConfig(), trainable=False)
    with torch.no_grad():
        for p in source.module.parameters():
            p.add_(0.5)  # far from any fresh initialisation
    save_model_weights(source.module, f"{base_dir}/weights")
    loaded = [p.detach().float().clone() for p in source.module.parameters()]
    engine = Engine(MODEL, ParallelConfig(), OptimConfig(lr=1e-12, weight_decay=0.0))
    load_base(engine, Path(base_dir))
    # a host batch, as every trainer builds one: the engine moves it to its device
    seqs = torch.randint(0, MODEL.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0), device="cpu")
    engine.train_step(lm_forward_step, [make_lm_batch(seqs, vocab_size=MODEL.vocab_size)], seq_length=8, micro_batch_size=2)
    drift = max(float((p.detach().float() - q).abs().max()) for p, q in zip(engine.module.parameters(), loaded))
    destroy_distributed()
    return drift


def test_bf16_load_base_survives_the_first_update(tmp_path):
    (drift,) = run_workers(_first_step_keeps_loaded_weights, 1, str(tmp_path))
    assert drift < 1e-2, drift  # an lr-1e-12 step moves nothing; stale main params would move ~0.5
