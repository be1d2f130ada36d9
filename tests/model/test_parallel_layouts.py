"""Megatron on CPU over gloo: every parallel layout computes what a single process computes.

Each layout starts from the same weights (written by the single-process run with megatron's
distributed checkpointing, resharded on load) and takes three Adam steps on the same global batch.
Tolerance: the layouts sum the same fp32 numbers in a different order (TP splits matmuls and
reduces partial sums, EP/DP reduce gradients across ranks), which moves results by a few fp32 ulps
per op; 2e-5 relative on losses of about 6 leaves room for that and for Adam's amplification of
tiny gradient differences in early steps, while any real bug (a missing all-reduce, a wrong shard,
a dropped expert) changes the loss by 1e-2 or more.
"""
import pytest

from tests.model.workers import train_losses
from tests.multiproc import run_workers

pytestmark = pytest.mark.multiproc
DENSE = dict(vocab_size=256, num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
             num_query_groups=2, max_seq_length=32)
MOE = dict(DENSE, num_moe_experts=4, moe_router_topk=2, moe_ffn_hidden_size=64,
           moe_shared_expert_intermediate_size=64)
REL = 2e-5


def _reference(tmp_path, model_kw):
    ckpt = str(tmp_path / "init")
    (ref,) = run_workers(train_losses, 1, model_kw, {}, ckpt, "save")
    return ref, ckpt


def _close(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert abs(x - y) <= REL * abs(y), (a, b)


def test_tp2_equals_tp1(tmp_path):
    ref, ckpt = _reference(tmp_path, DENSE)
    out = run_workers(train_losses, 2, DENSE, {"tensor_model_parallel_size": 2}, ckpt, "load")
    for r in out:
        _close(r["losses"], ref["losses"])
    assert ref["losses"][-1] < ref["losses"][0]  # the steps really trained


def test_moe_tp2_sequence_parallel_equals_tp1(tmp_path):
    ref, ckpt = _reference(tmp_path, MOE)
    out = run_workers(train_losses, 2, MOE, {"tensor_model_parallel_size": 2}, ckpt, "load")
    for r in out:
        _close(r["losses"], ref["losses"])


def test_ep2_equals_ep1(tmp_path):
    ref, ckpt = _reference(tmp_path, MOE)
    out = run_workers(train_losses, 2, MOE, {"expert_model_parallel_size": 2}, ckpt, "load")
    for r in out:
        _close(r["losses"], ref["losses"])


def test_pp2_schedule_equals_pp1(tmp_path):
    ref, ckpt = _reference(tmp_path, DENSE)
    out = run_workers(train_losses, 2, DENSE, {"pipeline_model_parallel_size": 2}, ckpt, "load")
    for r in out:
        _close(r["losses"], ref["losses"])


def test_dp2_replicas_stay_identical(tmp_path):
    ref, ckpt = _reference(tmp_path, DENSE)
    out = run_workers(train_losses, 2, DENSE, {}, ckpt, "load")
    assert {r["dp_rank"] for r in out} == {0, 1}
    assert out[0]["checksum"] == out[1]["checksum"]  # bitwise: same update applied on both replicas
    for r in out:
        _close(r["losses"], ref["losses"])
