"""GRPO metrics are global over data-parallel ranks (r1hpc.monitor.reduce): on two gloo ranks, each
rolling out its own prompts, every rank reports the values computed over the union of both ranks'
samples, not its own. Before the reducer, ``reward/std``, ``reward/frac_zero_std``,
``rollout/entropy``, ``response_length/max`` and ``response_length/clip_ratio`` were one rank's.
(A random-init model reaches max_new_tokens on both ranks, so the maximum here checks the wiring;
tests/monitor/test_reduce.py checks maxima that differ between ranks.)

Tolerance: the reducer sums in float64 in another order than the reference below, a few ulps;
discrete values (maxima, fractions of counts) must match exactly.
"""
import pytest
import torch

from tests.multiproc import run_workers
from tests.train.workers import dp_metrics_run

pytestmark = pytest.mark.multiproc
G = 4


def _union(values: list[list[float]]) -> torch.Tensor:
    return torch.tensor([v for rank in values for v in rank], dtype=torch.float64)


def _frac_zero_std(rewards: torch.Tensor) -> float:
    return float((rewards.view(-1, G).std(1) == 0).double().mean())


@pytest.fixture(scope="module")
def ranks():
    return run_workers(dp_metrics_run, 2)


def test_rollout_metrics_are_those_of_the_union_of_both_ranks(ranks):
    batches = [r["batch"] for r in ranks]
    rewards, lengths = _union([b["rewards"] for b in batches]), _union([b["lengths"] for b in batches])
    # the test means something only if the ranks' samples differ where these metrics look
    for key in ("rewards", "lengths", "truncated"):
        assert batches[0][key] != batches[1][key], key
    assert len(batches[0]["entropies"]) != len(batches[1]["entropies"])  # unequal token counts: weighting matters
    local_std = [float(torch.tensor(b["rewards"], dtype=torch.float64).std()) for b in batches]
    assert all(abs(s - float(rewards.std())) > 1e-6 for s in local_std)  # one rank's std is not the global one
    want = {"reward/std": float(rewards.std()), "reward/mean": float(rewards.mean()),
            "reward/frac_zero_std": _frac_zero_std(rewards),
            "response_length/max": float(lengths.max()), "response_length/mean": float(lengths.mean()),
            "rollout/entropy": float(_union([b["entropies"] for b in batches]).mean()),
            "response_length/clip_ratio": float(_union([b["truncated"] for b in batches]).mean())}
    for b in batches:
        for key, value in want.items():
            assert b["metrics"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    for key in ("response_length/max", "reward/frac_zero_std"):
        assert batches[0]["metrics"][key] == want[key]


def test_train_step_logs_the_global_values(ranks):
    rewards = _union([r["step_rewards"] for r in ranks])
    assert ranks[0]["step_rewards"] != ranks[1]["step_rewards"]
    for r in ranks:
        m = r["step"]
        assert m["reward/std"] == pytest.approx(float(rewards.std()), rel=1e-9)
        assert m["reward/frac_zero_std"] == _frac_zero_std(rewards)
        assert m["reward/mean"] == pytest.approx(float(rewards.mean()), rel=1e-9)
    assert ranks[0]["step"] == ranks[1]["step"]  # every rank holds the same global metrics, timings (max) included
