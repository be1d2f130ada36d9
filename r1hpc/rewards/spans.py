"""Which part of a response a reward looks at: the whole text, the reasoning, or the final part.

R1 scores helpfulness on the summary only and harmlessness on the whole response; the language
reward reads only the chain of thought.
"""
from __future__ import annotations

from r1hpc.rewards.extract import last_answer_tag

SPANS = ("all", "think", "answer", "summary")


def select_span(response: str, span: str, *, starts_in_think: bool = False) -> str:
    """``think``: inside ``<think>..</think>`` (from the start when the prompt opened the block);
    ``summary``: everything after ``</think>``; ``answer``: the last ``<answer>`` content, else
    the summary. Missing parts give ""."""
    if span == "all":
        return response
    if span not in SPANS:
        raise ValueError(f"unknown span {span!r}; known: {', '.join(SPANS)}")
    close = response.find("</think>")
    if span == "think":
        open_ = response.find("<think>")
        if open_ >= 0 and (close < 0 or open_ < close):
            start = open_ + len("<think>")
        elif starts_in_think:
            start = 0
        else:
            return ""
        return response[start : close if close >= 0 else len(response)]
    summary = response[close + len("</think>") :] if close >= 0 else ("" if starts_in_think else response)
    if span == "summary":
        return summary
    tag = last_answer_tag(summary)
    return tag if tag is not None else summary
