"""Aha events: a reflection marker followed by a changed answer, in a response that ends correct.

The answer a response holds just before a marker is read from the text before it: its last
``<answer>`` tag or ``\\boxed{}`` (``extract_answer``), else an "answer is ..." phrase, else its
last number. The final answer is the response's last ``<answer>``/box, and it must be stated after
the marker. This is a heuristic read of the text, which is the point: it counts what a reader of
the transcript would call "the model changed its mind and got it right", per step, so the claim
can be checked against accuracy rather than taken from anecdotes.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from r1hpc.monitor.markers import MarkerHit
from r1hpc.rewards.extract import boxed_answers, extract_answer


@dataclasses.dataclass(frozen=True)
class AnswerChange:
    marker: MarkerHit
    before: str  # the answer held just before the marker
    after: str  # the final answer


def normalize_answer(answer: str) -> str:
    return "".join(answer.split()).rstrip(".").lower().replace(",", "")


def final_answer_start(text: str) -> int:
    """Where the final answer is stated: the last ``<answer>`` tag or, without one, the last box."""
    tag = text.rfind("<answer>")
    if tag >= 0 and text.find("</answer>", tag) >= 0:
        return tag
    box = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    return box


def answer_changes(text: str, hits: Sequence[MarkerHit]) -> list[AnswerChange]:
    """For each marker before the final answer: the answer held before it, when that differs from
    the final one. Markers with no answer before them (the model had not committed) are skipped."""
    final = extract_answer(text).answer
    if final is None or (not boxed_answers(text) and "</answer>" not in text):
        return []
    final_at = final_answer_start(text)
    changes = []
    for hit in hits:
        if hit.start >= final_at:
            continue
        before = extract_answer(text[:hit.start], fallbacks=("answer_is", "last_number")).answer
        if before is not None and normalize_answer(before) != normalize_answer(final):
            changes.append(AnswerChange(hit, before, final))
    return changes

