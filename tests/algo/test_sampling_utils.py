import math

import torch

from r1hpc.algo import informative_groups, overlong_penalty, truncated_is_weights


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


def test_truncated_is_weights():
    trainer = torch.tensor([-1.0, -1.0, -1.0], requires_grad=True)
    rollout = torch.tensor([-1.0, -1.5, -5.0])
    w = truncated_is_weights(trainer, rollout, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([1.0, math.exp(0.5), 2.0]))
    assert not w.requires_grad
