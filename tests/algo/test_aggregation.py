import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from r1hpc.algo import aggregation_weights

MODES = ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]
LOSS = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("seq-mean-token-mean", ((1 + 2 + 3) / 3 + 4 / 1) / 2),  # R1 eq. 1
        ("token-mean", (1 + 2 + 3 + 4) / 4),  # DAPO
        ("seq-mean-token-sum-norm", ((1 + 2 + 3) / 4 + 4 / 4) / 2),  # Dr.GRPO, max_len = L = 4
    ],
)
def test_hand_computed(mode, expected):
    w = aggregation_weights(MASK, mode)
    assert (LOSS * w).sum().item() == pytest.approx(expected)
    assert torch.all(w[~MASK] == 0)


def test_sum_norm_uses_given_max_len():
    w = aggregation_weights(MASK, "seq-mean-token-sum-norm", max_len=10)
    assert (LOSS * w).sum().item() == pytest.approx((6 / 10 + 4 / 10) / 2)


def test_global_denominators_split_over_micro_batches():
    """Two micro-batches with the step's totals add up to the whole batch's loss."""
    for mode in MODES:
        whole = (LOSS * aggregation_weights(MASK, mode)).sum()
        parts = sum(
            (LOSS[i : i + 1] * aggregation_weights(MASK[i : i + 1], mode, num_tokens=4, num_seqs=2)).sum()
            for i in range(2)
        )
        assert parts.item() == pytest.approx(whole.item())


def test_unknown_mode():
    with pytest.raises(ValueError):
        aggregation_weights(MASK, "sum")  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=5), st.integers(0, 4), st.sampled_from(MODES))
def test_invariant_to_padding(lengths, extra_pad, mode):
    """Extra padding columns change nothing (sum-norm keeps a fixed max_len, as configured)."""
    g = torch.Generator().manual_seed(len(lengths))
    length = max(lengths)
    mask = torch.arange(length)[None] < torch.tensor(lengths)[:, None]
    loss = torch.randn(len(lengths), length, generator=g)
    padded_mask = torch.cat([mask, torch.zeros(len(lengths), extra_pad, dtype=torch.bool)], 1)
    padded_loss = torch.cat([loss, torch.randn(len(lengths), extra_pad, generator=g)], 1)
    a = (loss * aggregation_weights(mask, mode, max_len=8)).sum()
    b = (padded_loss * aggregation_weights(padded_mask, mode, max_len=8)).sum()
    torch.testing.assert_close(a, b)
