"""The engine's optimizer step on a CPU runs torch's fused Adam kernel and updates the weights exactly as
torch's reference AdamW (the tensor-by-tensor loop) would from the same gradients, step after step
(Adam's moments included), also after its param groups were replaced by loading optimizer state.

Tolerance: both compute the same fp32 update in a different operation order, so a weight may land
one rounding step apart: rtol 2.5e-7 (two fp32 ulps of the weight) plus atol 1e-8 (~1e-6 of one
step's change at lr 1e-2). Dropping the moments, the bias correction, the weight decay or a tensor
moves a weight by ~1e-3.
"""
from __future__ import annotations

import pytest
import torch

from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
from r1hpc.model.config import ModelConfig
from r1hpc.train.engine import Engine, OptimConfig
from r1hpc.train.lm_loss import lm_forward_step, make_lm_batch
from tests.multiproc import run_workers
from tests.train.workers import MODEL

pytestmark = pytest.mark.multiproc
VOCAB, B, S = 200, 2, 16


def _steps(steps: int) -> dict:
    """Per train step: the weights before, megatron's gradients (what the optimizer consumed) and the
    weights after, and whether every param group ran the fused kernel."""
    model_cfg = ModelConfig(vocab_size=VOCAB, **MODEL)
    init_distributed(ParallelConfig(), model_cfg, seed=1)
    engine = Engine(model_cfg, ParallelConfig(), OptimConfig(lr=1e-2, weight_decay=0.1, clip_grad=0.0))
    names = {id(p): n for n, p in engine.module.named_parameters()}
    g = torch.Generator().manual_seed(0)
    records = []
    for step in range(steps):
        if step == 1:  # a resume replaces the groups with the saved ones (torch's load_state_dict)
            engine.optimizer.load_state_dict(engine.optimizer.state_dict())
            for group in engine.optimizer.param_groups:
                group["fused"] = None
        before = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
        batch = make_lm_batch(torch.randint(0, VOCAB, (B, S + 1), generator=g), vocab_size=VOCAB)
        engine.train_step(lm_forward_step, [batch], seq_length=S, micro_batch_size=B)
        records.append({"before": before,
                        "grads": {n: p.main_grad.detach().clone() for n, p in engine.module.named_parameters()},
                        "after": {n: p.detach().clone() for n, p in engine.module.named_parameters()},
                        "fused": [group["fused"] for group in engine.optimizer.param_groups],
                        "groups": [(group["weight_decay"], [names[id(p)] for p in group["params"]])
                                   for group in engine.optimizer.param_groups]})
    destroy_distributed()
    return records


def test_cpu_step_is_fused_and_equals_torch_adamw():
    records = run_workers(_steps, 1, 3)[0]
    names = list(records[0]["before"])
    params = {n: torch.nn.Parameter(records[0]["before"][n].clone()) for n in names}
    groups = records[0]["groups"]  # megatron's param groups (weight decay per group)
    assert sorted(n for _, group in groups for n in group) == sorted(names)
    reference = torch.optim.AdamW([{"params": [params[n] for n in group], "weight_decay": wd} for wd, group in groups],
                                  lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    for step, rec in enumerate(records):
        assert all(rec["fused"]), f"step {step}: a param group stepped without torch's fused kernel"
        for n in names:
            params[n].data.copy_(rec["before"][n])  # rounding differences do not pile up over steps
            params[n].grad = rec["grads"][n]
        reference.step()
        for n in names:
            assert not torch.equal(rec["after"][n], rec["before"][n]), f"step {step}: {n} was not updated"
            torch.testing.assert_close(rec["after"][n], params[n].detach(), rtol=2.5e-7, atol=1e-8,
                                       msg=lambda m, n=n, step=step: f"step {step}, {n}: {m}")
