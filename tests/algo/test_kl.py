import math

import pytest
import torch

from r1hpc.algo import kl_penalized_rewards, kl_penalty
from r1hpc.algo.kl import K3_LOG_RATIO_CLAMP


def test_hand_computed_values():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    # log r = ref - logp = [-0.5, 1.0]
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([0.5, -1.0]))
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), torch.tensor([0.125, 0.5]))
    k3 = torch.tensor([math.exp(-0.5) + 0.5 - 1.0, math.exp(1.0) - 2.0])
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), k3)


def test_k3_nonnegative_finite_and_clamped():
    logp = torch.tensor([0.0, -100.0, -1.0], requires_grad=True)
    ref = torch.tensor([0.0, 0.0, -1.0])
    kl = kl_penalty(logp, ref, "k3")
    assert torch.isfinite(kl).all() and (kl >= 0).all()
    c = K3_LOG_RATIO_CLAMP
    assert kl[1].item() == pytest.approx(math.exp(c) - c - 1.0, rel=1e-6)
    kl.sum().backward()
    assert logp.grad[1] == 0  # beyond the clamp: no gradient (torch.clamp convention)
    assert logp.grad[0] == 0 and logp.grad[2] == 0  # minimum at logp == ref


def test_unknown_kind():
    with pytest.raises(ValueError):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k4")  # type: ignore[arg-type]


def test_kl_in_reward_sums_valid_tokens_only():
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    out = kl_penalized_rewards(torch.tensor([1.0]), logp, ref, mask, beta=0.1, kind="k1")
    torch.testing.assert_close(out, torch.tensor([1.0 - 0.1 * (0.5 - 1.0)]))
