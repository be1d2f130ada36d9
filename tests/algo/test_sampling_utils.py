import math

import pytest
import torch

from r1hpc.algo import informative_groups, overlong_penalty, rollout_is_weights


def test_informative_groups_drop_all_equal():
    r = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [2.0, 2.0, 3.0]])
    assert informative_groups(r).tolist() == [1, 3]
    assert informative_groups(torch.ones(2, 4)).numel() == 0


def test_overlong_penalty_dapo_shape():
    # max 20, buffer 4: free up to 16, then linear to -penalty at 20, -penalty beyond
    lengths = torch.tensor([5, 16, 17, 18, 20, 25])
    out = overlong_penalty(lengths, max_len=20, buffer_len=4, penalty=2.0)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, -0.5, -1.0, -2.0, -2.0]))
    assert torch.all(overlong_penalty(lengths, 20, 0) == 0)


# trainer - rollout log-ratios on the response tokens: row 0: 0, 0.5, 4.0; row 1: -1.0, -3.0 (its
# last position is padding and position 0 of both rows is prompt: nothing outside MASK may count)
TRAINER = torch.tensor([[7.0, -1.0, -1.0, -1.0], [7.0, -2.0, -3.0, 9.0]], requires_grad=True)
ROLLOUT = torch.tensor([[0.0, -1.0, -1.5, -5.0], [0.0, -1.0, 0.0, 0.0]])
MASK = torch.tensor([[False, True, True, True], [False, True, True, False]])
E = math.exp


def test_token_level_truncation():
    w, kept = rollout_is_weights(TRAINER, ROLLOUT, MASK, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.0, E(0.5), 2.0], [0.0, E(-1.0), E(-3.0), 0.0]]))
    assert torch.equal(kept, MASK)
    assert not w.requires_grad


def test_token_level_masking_keeps_the_ratio_inside_the_band():
    w, kept = rollout_is_weights(TRAINER, ROLLOUT, MASK, low=0.3, high=2.0)
    # E(4) > 2 and E(-3) < 0.3 leave the band; E(-1) = 0.37 and E(0.5) = 1.65 stay, unweighted by a cap
    assert kept.tolist() == [[False, True, True, False], [False, True, False, False]]
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.0, E(0.5), 0.0], [0.0, E(-1.0), 0.0, 0.0]]))


def test_masking_and_truncation_compose():
    w, kept = rollout_is_weights(TRAINER, ROLLOUT, MASK, cap=1.2, low=0.3, high=2.0)
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.0, 1.2, 0.0], [0.0, E(-1.0), 0.0, 0.0]]))
    assert kept.sum() == 3


def test_sequence_level_is_the_geometric_mean_of_the_response():
    w, kept = rollout_is_weights(TRAINER, ROLLOUT, MASK, level="sequence", cap=10.0)
    row0, row1 = E((0 + 0.5 + 4.0) / 3), E((-1.0 - 3.0) / 2)
    torch.testing.assert_close(w, torch.tensor([[0.0, row0, row0, row0], [0.0, row1, row1, 0.0]]))
    # masking drops whole responses: row 0's mean ratio 4.48 leaves [0.1, 3], row 1's 0.135 stays
    w, kept = rollout_is_weights(TRAINER, ROLLOUT, MASK, level="sequence", low=0.1, high=3.0)
    assert kept.tolist() == [[False] * 4, [False, True, True, False]]
    torch.testing.assert_close(w[1], torch.tensor([0.0, row1, row1, 0.0]))
    assert w[0].abs().sum() == 0


def test_unknown_level_is_refused():
    with pytest.raises(ValueError, match="token | sequence"):
        rollout_is_weights(TRAINER, ROLLOUT, MASK, level="geometric", cap=2.0)
