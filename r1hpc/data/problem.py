"""One verifiable problem: the record that flows from datasets through rollout, rewards and eval."""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Problem:
    """A prompt with what is needed to check an answer to it.

    ``data_source`` picks the rewards (see ``r1hpc.rewards``): e.g. "arithmetic", "countdown",
    "linear_equation", "gsm8k", "math500", "aime24", "amc23", "humaneval".
    ``answer`` is the gold final answer as text (LaTeX allowed); ``extra`` carries what a checker
    needs beyond it: Countdown ``{"numbers": [..], "target": int}``, code
    ``{"tests": str, "entry_point": str}``.
    """

    id: str
    question: str
    answer: str
    data_source: str
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
