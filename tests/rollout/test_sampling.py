"""The reference sampler: what it returns and which tokens it may draw."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from r1hpc.rollout.sampling import sample_tokens


def test_logprob_and_entropy_are_those_of_the_temperature_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    t = 0.7
    tok, logp, ent = sample_tokens(logits, temperature=t, top_p=0.5, generator=torch.Generator().manual_seed(0))
    ref = torch.log_softmax(logits / t, -1)[0]
    assert logp.item() == pytest.approx(ref[tok.item()].item(), abs=1e-6)
    assert ent.item() == pytest.approx(-(ref.exp() * ref).sum().item(), abs=1e-6)


def test_greedy_at_temperature_zero():
    logits = torch.randn(16, 50, generator=torch.Generator().manual_seed(1))
    tok, _, _ = sample_tokens(logits, temperature=0.0)
    assert torch.equal(tok, logits.argmax(-1))


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 9), seed=st.integers(0, 1000))
def test_top_k_only_draws_the_k_largest(k, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(64, 10, generator=g)
    tok, _, _ = sample_tokens(logits, temperature=1.0, top_k=k, generator=g)
    allowed = torch.topk(logits, k, -1).indices
    assert bool((allowed == tok[:, None]).any(-1).all())


@settings(max_examples=30, deadline=None)
@given(p=st.floats(0.05, 0.99), seed=st.integers(0, 1000))
def test_top_p_draws_only_from_the_nucleus(p, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(64, 12, generator=g) * 2
    tok, _, _ = sample_tokens(logits, temperature=1.0, top_p=p, generator=g)
    probs = torch.softmax(logits, -1)
    sorted_p, order = probs.sort(-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass of strictly more likely tokens
    rank = (order == tok[:, None]).float().argmax(-1)
    assert bool((before.gather(-1, rank[:, None]).squeeze(-1) < p + 1e-6).all())


def test_frequencies_follow_the_distribution():
    """Chi-square over 20k draws at 4 categories: the 0.1% critical value with 3 d.o.f. is 16.3."""
    logits = torch.tensor([[1.0, 0.5, 0.0, -1.0]]).expand(20000, -1)
    tok, _, _ = sample_tokens(logits, temperature=1.0, generator=torch.Generator().manual_seed(3))
    counts = torch.bincount(tok, minlength=4).float()
    expected = torch.softmax(logits[0], -1) * 20000
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 16.3


def test_same_seed_same_samples():
    logits = torch.randn(32, 40, generator=torch.Generator().manual_seed(5))
    a = sample_tokens(logits, temperature=0.9, top_p=0.9, generator=torch.Generator().manual_seed(9))[0]
    b = sample_tokens(logits, temperature=0.9, top_p=0.9, generator=torch.Generator().manual_seed(9))[0]
    assert torch.equal(a, b)
