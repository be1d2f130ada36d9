"""Which part of a response a reward looks at: the whole text, the reasoning, or the final part.

R1 scores helpfulness on the summary only and harmlessness on the whole response; the language
reward reads only the chain of thought. Two output forms: R1-Zero's ``<think>..</think>`` and
the cold-start form ``|special_token|reasoning|special_token|summary`` (r1hpc.data.cold_start).
"""
from __future__ import annotations

from r1hpc.data.cold_start import COLD_START_MARKER
from r1hpc.rewards.extract import last_answer_tag

SPANS = ("all", "think", "answer", "summary")
STYLES = ("r1_zero", "cold_start")


def select_span(response: str, span: str, *, starts_in_think: bool = False, style: str = "r1_zero") -> str:
    """``think``: the reasoning (inside ``<think>..</think>``, from the start when the prompt opened
    the block; cold start: between the first two markers); ``summary``: everything after
    ``</think>`` (cold start: after the second marker); ``answer``: the last ``<answer>`` content,
    else the summary. Missing parts give ""."""
    if span == "all":
        return response
    if span not in SPANS:
        raise ValueError(f"unknown span {span!r}; known: {', '.join(SPANS)}")
    if style == "cold_start":
        think, summary = _cold_start_parts(response, starts_in_think)
    elif style == "r1_zero":
        think, summary = _r1_zero_parts(response, starts_in_think)
    else:
        raise ValueError(f"unknown style {style!r}; known: {', '.join(STYLES)}")
    if span == "think":
        return think
    if span == "summary":
        return summary
    tag = last_answer_tag(summary)
    return tag if tag is not None else summary


def _r1_zero_parts(response: str, starts_in_think: bool) -> tuple[str, str]:
    close = response.find("</think>")
    open_ = response.find("<think>")
    if open_ >= 0 and (close < 0 or open_ < close):
        think = response[open_ + len("<think>") : close if close >= 0 else len(response)]
    elif starts_in_think:
        think = response[: close if close >= 0 else len(response)]
    else:
        think = ""
    summary = response[close + len("</think>") :] if close >= 0 else ("" if starts_in_think else response)
    return think, summary


def _cold_start_parts(response: str, starts_in_think: bool) -> tuple[str, str]:
    """Reasoning between the first two markers (to the end when unclosed); the summary after the
    second (the whole response when there is no marker at all, as R1-Zero's has no </think>)."""
    parts = ((COLD_START_MARKER if starts_in_think else "") + response).split(COLD_START_MARKER)
    if len(parts) == 1:
        return "", response
    return parts[1], (COLD_START_MARKER.join(parts[2:]) if len(parts) > 2 else "")
