"""R1-Zero format reward: ``<think>...</think><answer>...</answer>``, each tag once, in that order,
only whitespace outside."""
from __future__ import annotations

import dataclasses

from r1hpc.config import ConfigError

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


@dataclasses.dataclass
class FormatConfig:
    """``partial``: score for a malformed response, scaled by the share of the four tags that
    appear exactly once (0 disables partial credit). ``starts_in_think``: the prompt ends with
    "Assistant: <think>", so the response begins inside the think block without the opening tag."""

    partial: float = 0.0
    starts_in_think: bool = False

    def validate(self) -> None:
        if not 0.0 <= self.partial <= 1.0:
            raise ConfigError(f"partial must be in [0, 1], got {self.partial}")


def format_reward(response: str, *, partial: float = 0.0, starts_in_think: bool = False) -> float:
    """1.0 for the exact structure with a non-empty answer; else ``partial`` x (tags seen once)/4."""
    text = "<think>" + response if starts_in_think else response
    counts = [text.count(t) for t in _TAGS]
    if counts == [1, 1, 1, 1]:
        pos = [text.find(t) for t in _TAGS]
        between = text[pos[1] + len(_TAGS[1]) : pos[2]]
        outside = text[: pos[0]] + between + text[pos[3] + len(_TAGS[3]) :]
        answer = text[pos[2] + len(_TAGS[2]) : pos[3]]
        if pos == sorted(pos) and not outside.strip() and answer.strip():
            return 1.0
    return partial * sum(c == 1 for c in counts) / len(_TAGS)
