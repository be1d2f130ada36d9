"""Hypothesis properties of the GRPO objective and of grpo_loss."""
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from r1hpc.algo import GRPOLossParams, group_advantages, grpo_loss
from r1hpc.algo.objective import token_objective

SETTINGS = settings(max_examples=60, deadline=None)
finite = dict(allow_nan=False, allow_infinity=False)


def _pg_and_grad(logp, old, adv, **kw):
    x = torch.tensor([logp], dtype=torch.float64, requires_grad=True)
    tok = token_objective(x, torch.zeros(1), torch.tensor([old]), torch.tensor([adv]),
                          torch.tensor([True]), GRPOLossParams(**kw))
    tok["loss"].sum().backward()
    return tok, x.grad.item()


@SETTINGS
@given(st.floats(-10, 0, **finite), st.floats(-1.0, 1.0, **finite), st.floats(-3, 3, **finite),
       st.floats(0.05, 0.5), st.floats(0.05, 0.5))
def test_clipping_only_on_the_side_that_matches_the_advantage(logp, delta, adv, eps_low, eps_high):
    """With A > 0 the ratio is clipped only above 1 + eps_high, with A < 0 only below 1 - eps_low;
    clipped tokens get no gradient, every other token gets -A * ratio."""
    assume(abs(adv) > 1e-3)
    tok, grad = _pg_and_grad(logp, logp - delta, adv, eps_low=eps_low, eps_high=eps_high)
    ratio = tok["ratio"].item()
    assume(abs(ratio - (1 + eps_high)) > 1e-6 and abs(ratio - (1 - eps_low)) > 1e-6)
    high = adv > 0 and ratio > 1 + eps_high
    low = adv < 0 and ratio < 1 - eps_low
    assert bool(tok["is_clipped_high"]) == high and bool(tok["is_clipped_low"]) == low
    expected = 0.0 if (high or low) else -adv * ratio
    assert abs(grad - expected) <= 1e-5 * max(1.0, abs(expected))


@SETTINGS
@given(st.floats(-10, 0, **finite), st.floats(-5.0, 5.0, **finite), st.floats(-3, -1e-3, **finite),
       st.floats(1.5, 10.0))
def test_dual_clip_bounds_the_loss_of_negative_advantages(logp, delta, adv, c):
    tok, grad = _pg_and_grad(logp, logp - delta, adv, dual_clip_c=c)
    assert tok["loss"].item() <= -c * adv * (1 + 1e-6)
    if tok["ratio"].item() > c * (1 + 1e-6):
        assert tok["is_clipped_dual"].item() and grad == 0.0
    free, _ = _pg_and_grad(logp, logp - delta, adv)  # without dual clip the loss grows with the ratio
    assert free["loss"].item() >= tok["loss"].item() - 1e-9


@SETTINGS
@given(st.integers(2, 6), st.floats(-5, 5, **finite), st.sampled_from(["grpo", "drgrpo", "rloo"]),
       st.integers(0, 2**16))
def test_all_equal_rewards_give_zero_policy_gradient(g, reward, estimator, seed):
    gen = torch.Generator().manual_seed(seed)
    adv = group_advantages(torch.full((1, g), reward), estimator)
    assert torch.all(adv == 0)
    length, v = 3, 11
    t = g * length
    x = torch.randn(t, v, generator=gen).requires_grad_()
    loss, _ = grpo_loss(x, torch.randint(0, v, (t,), generator=gen), torch.randn(t, generator=gen) - 2,
                        adv.flatten().repeat_interleave(length), torch.full((t,), 1.0 / t),
                        GRPOLossParams(impl="torch"))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(x.grad == 0)


@SETTINGS
@given(st.integers(1, 12), st.integers(1, 6), st.integers(0, 2**16), st.sampled_from(["k1", "k2", "k3"]))
def test_loss_invariant_to_padding(t, pad, seed, kl_kind):
    """Appending weight-0 tokens with arbitrary contents changes neither the loss nor the gradient."""
    gen = torch.Generator().manual_seed(seed)
    v = 9
    cols = [torch.randn(t + pad, v, generator=gen) * 2, torch.randint(0, v, (t + pad,), generator=gen),
            torch.randn(t + pad, generator=gen) * 100, torch.randn(t + pad, generator=gen),
            torch.rand(t + pad, generator=gen), torch.randn(t + pad, generator=gen) * 100]
    cols[4][t:] = 0.0
    params = GRPOLossParams(beta=0.1, entropy_coef=0.01, dual_clip_c=3.0, kl_kind=kl_kind, impl="torch")

    def run(n):
        x = cols[0][:n].clone().requires_grad_()
        loss, _ = grpo_loss(x, cols[1][:n], cols[2][:n], cols[3][:n], cols[4][:n], params, ref_logp=cols[5][:n])
        loss.backward()
        return loss, x.grad

    loss_a, grad_a = run(t)
    loss_b, grad_b = run(t + pad)
    assert torch.isfinite(loss_b)
    torch.testing.assert_close(loss_a, loss_b)
    torch.testing.assert_close(grad_a, grad_b[:t])
    assert torch.all(grad_b[t:] == 0)
