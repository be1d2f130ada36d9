"""pass@1, the unbiased pass@k estimator and cons@k against hand-computed cases and brute force."""
from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from r1hpc.eval.passk import cons_at_k, majority, pass_at_1, pass_at_k, pass_at_k_exact
from r1hpc.rewards.normalize import answer_key


def test_pass_at_1_is_the_share_correct():
    assert pass_at_1([1, 0, 0, 1]) == 0.5
    assert pass_at_1([True, True, True]) == 1.0
    with pytest.raises(ValueError):
        pass_at_1([])


def test_pass_at_k_hand_cases():
    assert pass_at_k(4, 0, 2) == 0.0
    assert pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # C(3,2)/C(4,2) = 3/6 missed
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)
    assert pass_at_k(4, 1, 4) == 1.0  # n - c < k: every draw holds the correct one
    for bad in ((3, 4, 1), (3, 1, 0), (3, 1, 4)):
        with pytest.raises(ValueError):
            pass_at_k(*bad)


@given(st.integers(1, 9).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_equals_brute_force_enumeration(nck):
    """The estimator is the share of k-subsets of the n samples that hold a correct one."""
    n, c, k = nck
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)
    assert pass_at_k_exact(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_majority_ignores_missing_answers_and_breaks_ties_by_first_seen():
    assert majority([None, "a", "b", "b", "a"]) == 1  # a and b tie at 2: a came first
    assert majority([None, "a", "b", "b"]) == 2
    assert majority([None, None]) is None
    assert majority([]) is None


def test_cons_at_k_hand_cases():
    keys = [answer_key(a) for a in ("1,000", "7", "1000.0", "7", "\\$1000")]
    assert keys[0] == keys[2] == keys[4]  # formatting does not split the vote
    assert cons_at_k(keys, [1, 0, 1, 0, 1]) == 1.0
    assert cons_at_k(keys, [0, 1, 0, 1, 0]) == 0.0  # the minority answer being right does not count
    # the winning answer is correct if the verifier accepted it in any sample (one was marked 0, e.g. sprayed boxes)
    assert cons_at_k(["5", "5", "3"], [0, 1, 0]) == 1.0
    assert cons_at_k([None, None, "3"], [0, 0, 1]) == 1.0  # only answering samples vote
    assert cons_at_k([None, None], [0, 0]) == 0.0
    with pytest.raises(ValueError):
        cons_at_k(["1"], [1, 0])
