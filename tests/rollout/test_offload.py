"""rollout.offload_train_state acts only on a GPU: on a CPU it leaves the optimizer state and grad
buffers where they are, says so once, and the rollout runs as without it."""
from __future__ import annotations

import logging

import pytest
import torch

from tests.multiproc import run_workers

pytestmark = pytest.mark.multiproc


def _offload_on_cpu() -> dict:
    from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
    from r1hpc.model.config import ModelConfig
    from r1hpc.rollout.offload import CPU_NOTE, train_state_offloaded
    from r1hpc.train.engine import Engine, OptimConfig

    model_cfg = ModelConfig(vocab_size=97, num_layers=1, hidden_size=32, ffn_hidden_size=64, num_attention_heads=2,
                            max_seq_length=32)
    init_distributed(ParallelConfig(), model_cfg, seed=1)
    engine = Engine(model_cfg, ParallelConfig(), OptimConfig())
    before = [p.data_ptr() for p in engine.module.parameters()]
    grads = [b.grad_data.data_ptr() for b in engine.model[0].buffers]
    notes = []
    handler = logging.Handler()
    handler.emit = lambda record: notes.append(record.getMessage())
    logging.getLogger("r1hpc.rollout.offload").addHandler(handler)
    offloaded = []
    for _ in range(2):
        with train_state_offloaded(engine, True) as did:
            offloaded.append(did)
    out = {"offloaded": offloaded, "notes": notes, "note": CPU_NOTE,
           "params_kept": before == [p.data_ptr() for p in engine.module.parameters()],
           "grads_kept": grads == [b.grad_data.data_ptr() for b in engine.model[0].buffers]}
    destroy_distributed()
    return out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU behaviour")
def test_offload_train_state_is_a_noop_on_cpu_and_says_so():
    (out,) = run_workers(_offload_on_cpu, 1)
    assert out["offloaded"] == [False, False]
    assert out["notes"] == [out["note"]]  # once, not per rollout
    assert out["params_kept"] and out["grads_kept"]
