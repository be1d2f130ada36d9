"""Masked importance sampling in the trainer's update (algo.mis_low / mis_high, token and sequence
level) on a real megatron-core GPTModel: a rejected token or response leaves the loss and its
normaliser, so the update equals an uncorrected one over the kept tokens alone.

The rollout log-probs are the trainer's own old log-probs on the kept tokens (ratio exactly 1, so
masked IS weighs them 1) and 5 nats above them on the tokens meant to be rejected (ratio e^-5, far
below mis_low). Gradients are read before the optimizer moves anything (lr 0, no clipping); both
updates run the same decoder over the same rows, so they agree to fp32 summation order (rtol 1e-5,
atol 1e-6 of the largest entry). Without the mask (last check) the gradient differs by far more.
"""
from __future__ import annotations

import pytest
import torch

from r1hpc.algo.loss import AlgoConfig
from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
from r1hpc.model.config import ModelConfig
from r1hpc.monitor.reduce import StepMetrics
from r1hpc.train.engine import Engine, OptimConfig
from r1hpc.train.grpo import GRPOConfig
from r1hpc.train.grpo_update import GRPOUpdate
from tests.multiproc import run_workers
from tests.train.workers import MODEL

pytestmark = pytest.mark.multiproc
VOCAB, B, S, G = 300, 4, 20, 2


def _rows() -> dict:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (B, S), generator=g)
    mask = torch.zeros(B, S, dtype=torch.bool)
    for b, start in enumerate((5, 6, 7, 8)):
        mask[b, start:S - b] = True
    return {"tokens": tokens, "targets": torch.roll(tokens, -1, 1), "response_mask": mask}


def _rejected(level: str) -> torch.Tensor:
    """The response tokens the band must drop: two scattered tokens, or all of row 2."""
    mask = _rows()["response_mask"]
    out = torch.zeros_like(mask)
    if level == "token":
        out[0, 7] = out[3, 10] = True
    else:
        out[2] = mask[2]
    return out


def _gradients(level: str) -> dict:
    model_cfg = ModelConfig(vocab_size=VOCAB, **MODEL)
    init_distributed(ParallelConfig(), model_cfg, seed=3)
    engine = Engine(model_cfg, ParallelConfig(), OptimConfig(lr=0.0, clip_grad=1e9))
    grpo = GRPOConfig(micro_batch_size=B, mini_batches=1)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])

    def update(algo: AlgoConfig, rows: dict) -> tuple[dict, dict]:
        updater = GRPOUpdate(algo.with_sampling_temperature(1.0), grpo, vocab_size=VOCAB, group_size=G,
                             max_new_tokens=S, dp=1)
        metrics = StepMetrics(None)
        updater.update(engine, updater.logprobs(engine, None, dict(rows)), adv, metrics)
        return {n: p.main_grad.detach().clone() for n, p in engine.module.named_parameters()}, metrics.reduce()

    plain = AlgoConfig(beta=0.0, loss_agg_mode="token-mean")
    rows = _rows()
    probe = GRPOUpdate(plain.with_sampling_temperature(1.0), GRPOConfig(micro_batch_size=B, mini_batches=2),
                       vocab_size=VOCAB, group_size=G, max_new_tokens=S, dp=1)
    trainer_logp = probe.logprobs(engine, None, dict(rows))["old_logp"]
    rejected = _rejected(level)
    rows["rollout_logp"] = trainer_logp + 5.0 * rejected

    masked = AlgoConfig(beta=0.0, loss_agg_mode="token-mean", is_level=level, mis_low=0.5, mis_high=2.0)
    out = {"masked": update(masked, rows)}
    kept_only = dict(rows, response_mask=rows["response_mask"] & ~rejected, rollout_logp=trainer_logp)
    out["kept_only"] = update(plain, kept_only)
    out["unmasked"] = update(plain, dict(rows, rollout_logp=trainer_logp))
    destroy_distributed()
    return out


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_masked_tokens_leave_the_update(level):
    out = run_workers(_gradients, 1, level)[0]
    (masked, metrics), (kept_only, _), (unmasked, _) = out["masked"], out["kept_only"], out["unmasked"]
    mask, rejected = _rows()["response_mask"], _rejected(level)
    assert metrics["rollout_corr/masked_frac"] == pytest.approx(float(rejected.sum() / mask.sum()))
    assert metrics["rollout_corr/is_weight_mean"] == pytest.approx(1.0, abs=1e-5)
    moved = 0.0
    for name, g in kept_only.items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(masked[name], g, rtol=1e-5, atol=1e-6 * g.abs().max().item(), msg=name)
        moved = max(moved, float((unmasked[name] - g).abs().max() / g.abs().max()))
    assert moved > 1e-2  # the rejected tokens matter: without the mask the gradient is another
