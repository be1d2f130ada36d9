"""Rollout/trainer mismatch metrics against a hand-computed example, and summed over two gloo ranks."""
import math

import pytest
import torch

from r1hpc.algo.mismatch import mismatch_metrics
from tests.multiproc import run_workers

# two responses; row 0 has 3 response tokens, row 1 has 2 (its last position is padding, and
# position 0 of both is prompt): the values under the mask are the only ones that may count
ROLLOUT = torch.tensor([[9.0, -1.0, -2.0, -0.5], [9.0, -3.0, -0.1, 7.0]])
TRAINER = torch.tensor([[-4.0, -1.5, -2.0, -1.5], [0.0, -2.0, -0.2, -7.0]])
MASK = torch.tensor([[False, True, True, True], [False, True, True, False]])


def test_hand_computed_example():
    m = mismatch_metrics(ROLLOUT, TRAINER, MASK)
    # rollout - trainer on the masked tokens: row 0: 0.5, 0, 1.0; row 1: -1.0, 0.1
    assert m["sampling/sampling_logp_difference/mean"] == pytest.approx((0.5 + 0 + 1.0 + 1.0 + 0.1) / 5)
    assert m["sampling/sampling_logp_difference/max"] == pytest.approx(1.0)
    assert m["rollout_corr/seq_kl"] == pytest.approx(((0.5 + 0 + 1.0) + (-1.0 + 0.1)) / 2)
    # ratios exp(-0.5), 1, exp(-1), exp(1), exp(-0.1): exp(+-1) leave [1/2, 2], exp(-0.5) = 0.61 does not
    assert m["rollout_corr/ratio_out_of_band_frac"] == pytest.approx(2 / 5)


def test_band_edges_and_empty_batch():
    log2 = math.log(2.0)
    rollout = torch.zeros(1, 4)
    trainer = torch.tensor([[log2 - 1e-4, -(log2 - 1e-4), log2 + 1e-4, -(log2 + 1e-4)]])
    m = mismatch_metrics(rollout, trainer, torch.ones(1, 4, dtype=torch.bool))
    assert m["rollout_corr/ratio_out_of_band_frac"] == pytest.approx(0.5)  # just inside twice, outside twice
    empty = mismatch_metrics(rollout, trainer, torch.zeros(1, 4, dtype=torch.bool))
    assert all(v == 0.0 for v in empty.values())


def _rank_metrics(rank_rows: list) -> dict:
    from megatron.core import parallel_state

    from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
    from r1hpc.model.config import ModelConfig

    init_distributed(ParallelConfig(), ModelConfig(vocab_size=8), seed=0)
    rank = torch.distributed.get_rank()
    rows = rank_rows[rank]
    out = mismatch_metrics(ROLLOUT[rows], TRAINER[rows], MASK[rows], group=parallel_state.get_data_parallel_group())
    destroy_distributed()
    return out


@pytest.mark.multiproc
def test_two_data_parallel_ranks_give_the_whole_batch_figures():
    """Each rank holds one row; the reduced figures are those of both rows on one rank."""
    out = run_workers(_rank_metrics, 2, [[0], [1]])
    want = mismatch_metrics(ROLLOUT, TRAINER, MASK)
    for got in out:
        assert got == pytest.approx(want)


def test_correction_metrics_hand_computed():
    from r1hpc.algo.mismatch import add_correction_metrics
    from r1hpc.monitor.reduce import StepMetrics

    weights = torch.tensor([[0.0, 1.0, 2.0, 0.0], [0.0, 0.5, 0.0, 0.0]])
    kept = torch.tensor([[False, True, True, False], [False, True, False, False]])
    metrics = StepMetrics(None)
    add_correction_metrics(metrics, weights, kept, MASK, cap=2.0)
    m = metrics.reduce()
    # 5 response tokens, 3 kept with weights 1, 2 (at the cap), 0.5
    assert m["rollout_corr/masked_frac"] == pytest.approx(2 / 5)
    assert m["rollout_corr/is_weight_mean"] == pytest.approx(3.5 / 3)
    assert m["rollout_corr/truncated_frac"] == pytest.approx(1 / 3)
