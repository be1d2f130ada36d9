"""Token-entropy instruments: where in a response the policy is uncertain, which tokens are
"forking" tokens (high entropy: the few decisions that steer a reasoning path, after Wang et al.
2025, "Beyond the 80/20 rule"), and how entropy changes right after a reflection marker."""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch

POSITION_BINS = 4  # entropy by quarter of the response: start / early middle / late middle / end


def position_bin_sums(entropies: torch.Tensor, bins: int = POSITION_BINS) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy sums and token counts per equal share of the response (relative position)."""
    n = len(entropies)
    which = torch.arange(n, device=entropies.device) * bins // max(n, 1)
    return (torch.bincount(which, weights=entropies.double(), minlength=bins),
            torch.bincount(which, minlength=bins).double())


def entropy_shift(entropies: torch.Tensor, position: int, window: int) -> tuple[float, float] | None:
    """Mean entropy of the ``window`` tokens from ``position`` on, and of the ``window`` tokens
    before it; None when either side is empty."""
    before = entropies[max(0, position - window):position]
    after = entropies[position:position + window]
    if len(before) == 0 or len(after) == 0:
        return None
    return float(before.mean()), float(after.mean())


def forking_mask(entropies: torch.Tensor, threshold: float) -> torch.Tensor:
    return entropies > threshold


def top_forking_tokens(pieces_and_entropies: Sequence[tuple[Sequence[str], torch.Tensor]], threshold: float,
                       k: int = 10) -> list[tuple[str, int]]:
    """The ``k`` token strings that most often carry entropy above ``threshold``."""
    counts: Counter[str] = Counter()
    for pieces, ent in pieces_and_entropies:
        for i in forking_mask(ent, threshold).nonzero().flatten().tolist():
            counts[pieces[i]] += 1
    return counts.most_common(k)
