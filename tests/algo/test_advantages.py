import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from r1hpc.algo import group_advantages


def test_grpo_hand_computed():
    # rewards 0, 0, 1, 1: mean 0.5, unbiased std = sqrt(4 * 0.25 / 3)
    a = group_advantages(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), "grpo", eps=0.0)
    std = math.sqrt(1.0 / 3.0)
    torch.testing.assert_close(a, torch.tensor([[-0.5, -0.5, 0.5, 0.5]]) / std)


def test_drgrpo_is_centred_only():
    a = group_advantages(torch.tensor([[1.0, 2.0, 6.0]]), "drgrpo")
    torch.testing.assert_close(a, torch.tensor([[-2.0, -1.0, 3.0]]))


def test_rloo_is_leave_one_out():
    r = torch.tensor([[1.0, 2.0, 6.0], [0.0, 5.0, 1.0]])
    expected = torch.stack([r[:, i] - (r.sum(1) - r[:, i]) / 2 for i in range(3)], dim=1)
    torch.testing.assert_close(group_advantages(r, "rloo"), expected)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="G >= 2"):
        group_advantages(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        group_advantages(torch.zeros(3, 2), "ppo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[N, G\]"):
        group_advantages(torch.zeros(3))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-10, 10), min_size=2, max_size=8),
    st.sampled_from(["grpo", "drgrpo", "rloo"]),
)
def test_advantages_sum_to_zero_and_vanish_for_equal_rewards(rewards, estimator):
    r = torch.tensor([rewards, [rewards[0]] * len(rewards)], dtype=torch.float64)
    a = group_advantages(r, estimator)
    assert a.dtype == torch.float32
    assert abs(a[0].sum().item()) < 1e-3 * max(1.0, a[0].abs().max().item())
    assert torch.all(a[1] == 0)  # all-equal group: exactly zero, not 0/0
