"""A stand-in scorer for checks on a randomly initialised policy (GPU throughput checks, parallel
layout tests): the real rewards would be all zero there, leaving GRPO nothing to learn, so this one
varies between responses as a deterministic function of the text. Never a training reward."""
from __future__ import annotations

from typing import Sequence


class ResponseShapeScorer:
    """``score_batch`` with RewardScorer's signature: total (len % 5) / 4, accuracy len % 2, format 0."""

    def score_batch(self, texts: Sequence[str], problems: Sequence) -> list[dict[str, float]]:
        return [{"total": (len(t) % 5) / 4, "accuracy": float(len(t) % 2), "format": 0.0} for t in texts]
