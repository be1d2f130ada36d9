"""The analytic bytes model against the bytes megatron hands to gloo in a real 2-rank step.

Byte counts are deterministic (shapes, not timings). Beyond the modelled gradient and activation
traffic, a step all-reduces a few scalars (grad norm, token counts); the model leaves those out,
so the counted total may exceed it by at most SCALARS bytes, never fall short.
"""
import pytest

from r1hpc.launch.comm_model import StepShape, dense_params_per_rank, predict_step_bytes
from r1hpc.model.config import ModelConfig
from r1hpc.launch.scaling import counted_step
from tests.multiproc import run_workers

pytestmark = pytest.mark.multiproc
DENSE = dict(vocab_size=256, num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
             num_query_groups=2, max_seq_length=32)
SHAPE = StepShape(micro_batch_size=2, seq_length=16, num_micro_batches=2)
SCALARS = 64


def _run(parallel_kw):
    return run_workers(counted_step, 2, DENSE, parallel_kw, SHAPE.micro_batch_size, SHAPE.seq_length,
                       SHAPE.num_micro_batches)


def test_params_per_rank_formula():
    model = ModelConfig(**DENSE)
    # hand count: qkv 64x(4+2+2)x16, proj 64x64, fc1 64x256, fc2 128x64, 2 norms; embedding 256x64; final norm
    layer = 64 * 128 + 64 * 64 + 64 * 256 + 128 * 64 + 2 * 64
    assert dense_params_per_rank(model) == 2 * layer + 256 * 64 + 64
    assert dense_params_per_rank(model, tp=2) == 2 * (layer - 2 * 64) // 2 + 2 * 2 * 64 + 256 * 64 // 2 + 64


def test_dp2_gradient_all_reduce_matches_the_model():
    out = _run({})
    model = ModelConfig(**DENSE)
    predicted = predict_step_bytes(model, SHAPE, dp=2)
    for r in out:
        assert r["params"] == dense_params_per_rank(model)
        assert 0 <= r["bytes"]["all_reduce"] - predicted["dp"] - predicted["loss"] <= SCALARS, (r["bytes"], predicted)


def test_tp2_activation_all_reduces_match_the_model():
    out = _run({"tensor_model_parallel_size": 2})
    model = ModelConfig(**DENSE)
    predicted = predict_step_bytes(model, SHAPE, tp=2)
    for r in out:
        assert r["params"] == dense_params_per_rank(model, tp=2)
        assert 0 <= r["bytes"]["all_reduce"] - predicted["tp"] - predicted["loss"] <= SCALARS, (r["bytes"], predicted)
