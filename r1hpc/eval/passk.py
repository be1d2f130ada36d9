"""The per-problem evaluation metrics of the R1 paper, as pure functions of k scored samples.

- pass@1 averaged over k samples: the share of correct samples;
- pass@k, the unbiased estimator of Chen et al. (2021): 1 - C(n-c, k) / C(n, k) for n samples of which
  c are correct, the chance that k drawn without replacement include a correct one;
- cons@k: the majority answer among the samples (answers normalised, so "1,000" and "1000.0" vote
  together; samples without an answer do not vote; a tie goes to the answer seen first) is correct.
"""
from __future__ import annotations

from math import comb
from typing import Hashable, Optional, Sequence


def pass_at_1(correct: Sequence[bool | float]) -> float:
    if not correct:
        raise ValueError("pass@1 of no samples")
    return sum(float(c) for c in correct) / len(correct)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (numerically stable product form)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def pass_at_k_exact(n: int, c: int, k: int) -> float:
    """The same quantity by binomial coefficients (the reference the product form is checked against)."""
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority(keys: Sequence[Optional[Hashable]]) -> Optional[int]:
    """Index of the first sample holding the most frequent non-None key; None if no sample has one."""
    counts: dict[Hashable, int] = {}
    first: dict[Hashable, int] = {}
    for i, key in enumerate(keys):
        if key is None:
            continue
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, i)
    if not counts:
        return None
    best = max(counts.values())
    return min(first[key] for key, n in counts.items() if n == best)


def cons_at_k(keys: Sequence[Optional[Hashable]], correct: Sequence[bool | float]) -> float:
    """1.0 if the majority answer is correct: if the verifier accepted it in any sample that gave it
    (a sample can score 0 with the right final answer, e.g. for boxing several different answers)."""
    if len(keys) != len(correct):
        raise ValueError(f"{len(keys)} answers but {len(correct)} verdicts")
    winner = majority(keys)
    if winner is None:
        return 0.0
    return max(float(c) for key, c in zip(keys, correct) if key == keys[winner])
