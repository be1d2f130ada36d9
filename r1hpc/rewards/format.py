"""Format reward for the two output forms: R1-Zero's ``<think>...</think><answer>...</answer>``
(each tag once, in that order, only whitespace outside) and DeepSeek-R1's cold-start form
``|special_token|reasoning|special_token|summary`` whose summary holds the ``<answer>`` tag."""
from __future__ import annotations

import dataclasses
from typing import Literal

from r1hpc.config import ConfigError
from r1hpc.data.cold_start import COLD_START_MARKER
from r1hpc.rewards.extract import last_answer_tag

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


@dataclasses.dataclass
class FormatConfig:
    """``style``: which output form the format reward checks and the spans split
    (``r1_zero`` or ``cold_start``). ``partial``: score for a malformed response, scaled by the
    share of checks it passes (r1_zero: the four tags that appear exactly once; cold_start: the
    four conditions of :func:`cold_start_checks`); 0 disables partial credit. ``starts_in_think``:
    the prompt ends inside the reasoning ("Assistant: <think>", or the first marker), so the
    response begins without the opening tag."""

    style: Literal["r1_zero", "cold_start"] = "r1_zero"
    partial: float = 0.0
    starts_in_think: bool = False

    def validate(self) -> None:
        if not 0.0 <= self.partial <= 1.0:
            raise ConfigError(f"partial must be in [0, 1], got {self.partial}")


def format_reward(response: str, *, partial: float = 0.0, starts_in_think: bool = False,
                  style: str = "r1_zero") -> float:
    """1.0 for the exact structure with a non-empty answer; else ``partial`` x share of checks passed."""
    if style == "cold_start":
        checks = cold_start_checks((COLD_START_MARKER if starts_in_think else "") + response)
        return 1.0 if all(checks) else partial * sum(checks) / len(checks)
    if style != "r1_zero":
        raise ValueError(f"unknown format style {style!r}; known: r1_zero, cold_start")
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


def cold_start_checks(text: str) -> tuple[bool, bool, bool, bool]:
    """(exactly two markers, the text begins with one after leading whitespace, non-empty reasoning
    between them, a summary holding a non-empty <answer> tag)."""
    parts = text.split(COLD_START_MARKER)
    reasoning = parts[1] if len(parts) > 1 else ""
    summary = parts[-1] if len(parts) > 2 else ""
    answer = last_answer_tag(summary)
    return (len(parts) == 3, text.lstrip().startswith(COLD_START_MARKER), bool(reasoning.strip()),
            answer is not None and bool(answer.strip()))
