"""algo.fused_output on and off give the same GRPO update: the trainer's own forward steps
(GRPOUpdate._loss_step, forward_logp) on a real megatron-core GPTModel in megatron's DDP, through
megatron's forward-backward schedule, with tied and untied output weights, TP = 1 and TP = 2 with
sequence parallelism (the hidden-state gather) and without it (the input-gradient all-reduce).

Tolerances. Both paths run the same decoder; they differ only in how the output layer and the
vocabulary reduction are summed (one fp32 matmul and a chunked log-sum-exp vs tiles and an online
one), a few fp32 ulps on logits ~1: loss and log-probs rtol 1e-5 (atol 1e-6), every parameter's
gradient rtol 1e-4 with atol 1e-5 of its largest entry (measured: loss ~1e-7 relative, gradients
~1e-6 of their maximum). A real error (padding in the softmax, a missing gradient reduction over
TP, the wrong output weight) moves the loss or a gradient by far more.
"""
from __future__ import annotations


import pytest
import torch

from r1hpc.algo.loss import AlgoConfig
from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
from r1hpc.model.config import ModelConfig
from r1hpc.train.engine import Engine, OptimConfig
from tests.multiproc import run_workers
from tests.train.workers import MODEL, update_probe

pytestmark = pytest.mark.multiproc
VOCAB, B, S = 300, 4, 24  # 300 real ids: megatron pads the vocabulary to 384 (TP 1) or 512 (TP 2)


def _micro_batch() -> dict:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (B, S), generator=g)
    mask = torch.zeros(B, S, dtype=torch.bool)
    for b, start in enumerate((6, 8, 10, 12)):
        mask[b, start:S - b] = True  # ragged responses after a prompt
    n = float(mask.sum())
    return {"tokens": tokens, "targets": torch.roll(tokens, -1, 1), "response_mask": mask,
            "weights": mask.float() / n, "advantages": torch.randn(B, generator=g)[:, None].expand(B, S).contiguous(),
            "old_logp": -5.7 + 0.3 * torch.randn(B, S, generator=g), "ref_logp": -5.7 + 0.3 * torch.randn(B, S, generator=g),
            "tis_weight": torch.rand(B, S, generator=g) * 2}


def _steps(model_kw: dict, parallel_kw: dict, on_policy: bool) -> dict:
    """Per setting of algo.fused_output, one GRPO update's loss and gradients (no optimizer step) and
    the log-prob pass, of the same model. ``on_policy``: no old log-probs, the loss takes its own."""
    model_cfg = ModelConfig(vocab_size=VOCAB, **model_kw)
    parallel_cfg = ParallelConfig(**parallel_kw)
    init_distributed(parallel_cfg, model_cfg, seed=3)
    engine = Engine(model_cfg, parallel_cfg, OptimConfig())
    algo = AlgoConfig(beta=0.04, entropy_coef=0.01, dual_clip_c=3.0, temperature=0.8)
    trainer, measure = update_probe(engine, algo, VOCAB, B)
    out = {}
    for fused in (False, True):
        trainer.algo.fused_output = fused
        mb = _micro_batch()
        if on_policy:
            del mb["old_logp"]
        out[fused] = measure(mb)
    destroy_distributed()
    return out


def _compare(model_kw: dict, parallel_kw: dict, world: int, on_policy: bool = False) -> None:
    mask = _micro_batch()["response_mask"]
    for rank in run_workers(_steps, world, model_kw, parallel_kw, on_policy):
        a, b = rank[False], rank[True]
        torch.testing.assert_close(b["loss"], a["loss"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b["logp"][mask], a["logp"][mask], rtol=1e-5, atol=1e-6)
        assert a["grads"].keys() == b["grads"].keys()
        for name, g in a["grads"].items():
            assert g.abs().max() > 0, name  # every parameter, the output weight included, is trained
            torch.testing.assert_close(b["grads"][name], g, rtol=1e-4, atol=1e-5 * g.abs().max().item(), msg=name)


@pytest.mark.parametrize("tie, on_policy", [(True, False), (False, True)], ids=["tied", "untied-on-policy"])
def test_fused_output_same_update_tp1(tie, on_policy):
    _compare(dict(MODEL, tie_embeddings=tie), {}, 1, on_policy)


@pytest.mark.parametrize("sp", [True, False], ids=["sequence-parallel", "no-sp"])
def test_fused_output_same_update_tp2(sp):
    _compare(MODEL, {"tensor_model_parallel_size": 2, "sequence_parallel": sp}, 2)
