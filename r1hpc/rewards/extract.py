"""Pull the final answer out of a model response: last ``\\boxed{}``/``\\fbox{}``, the ``<answer>``
tag, then opt-in textual fallbacks.

Everything here is linear in the input (one brace-matching pass, no backtracking regexes, and no
copy of a box's content longer than ``cap``: boxes nested 25,000 deep would otherwise copy a
quadratic amount of text) so it can run in the training process on untrusted text without a timeout.
"""
from __future__ import annotations

import dataclasses
import re

FALLBACKS = ("answer_is", "gsm8k_hash", "last_number")

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*(\{)?")
_BRACE_RE = re.compile(r"\\[{}]|[{}]")
_ANSWER_IS_RE = re.compile(r"answer\s*(?:is\b|:)\s*:?", re.I)
_HASH_RE = re.compile(r"####")
NUMBER_RE = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)|[+-]?\.\d+")


@dataclasses.dataclass(frozen=True)
class LongAnswer:
    """A boxed answer longer than the cap, named by its place in the text instead of being copied
    (two of them are different answers unless they are the same box)."""

    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start


@dataclasses.dataclass(frozen=True)
class Extraction:
    """The chosen answer (None when none was found) and every boxed answer seen (for anti-spraying)."""

    answer: str | None
    boxed: tuple[str | LongAnswer, ...] = ()


def match_braces(text: str) -> dict[int, int]:
    """Map the index of every '{' to the index of its matching '}' (unescaped braces, one pass
    over the braces only)."""
    stack: list[int] = []
    pairs: dict[int, int] = {}
    for m in _BRACE_RE.finditer(text):
        tok = m.group()
        if tok == "{":
            stack.append(m.start())
        elif tok == "}" and stack:
            pairs[stack.pop()] = m.start()
    return pairs


def boxed_answers(text: str, cap: int = 1_000) -> list[str | LongAnswer]:
    """Contents of every ``\\boxed{..}``/``\\fbox{..}`` (nested braces allowed) and ``\\boxed 5``, in
    order; a content longer than ``cap`` characters is a ``LongAnswer`` (its span, not a copy)."""
    if "\\boxed" not in text and "\\fbox" not in text:
        return []
    pairs = match_braces(text)
    found: list[str | LongAnswer] = []
    for m in _BOX_RE.finditer(text):
        if m.group(1):
            close = pairs.get(m.start(1))
            if close is not None:
                found.append(text[m.end(1) : close].strip() if close - m.end(1) <= cap else LongAnswer(m.end(1), close))
        else:
            tail = text[m.end() : m.end() + 64].split()
            if tail and not tail[0].startswith("\\"):
                found.append(tail[0].rstrip(".$"))
    return [f for f in found if f]


def _rest_of_line(text: str, start: int, limit: int = 256) -> str:
    line = text[start : start + limit].split("\n", 1)[0].strip()
    for stop in (". ", "$."):
        cut = line.find(stop)
        if cut >= 0:
            line = line[: cut + (1 if stop == "$." else 0)]
    return line.strip().rstrip(".").strip().strip("$").strip()


def _last(pattern: re.Pattern, text: str) -> re.Match | None:
    last = None
    for last in pattern.finditer(text):
        pass
    return last


def _fallback(text: str, name: str) -> str | None:
    if name not in FALLBACKS:
        raise ValueError(f"unknown answer fallback {name!r}; known: {', '.join(FALLBACKS)}")
    if name == "last_number":
        m = _last(NUMBER_RE, text)
        return m.group(0) if m else None
    m = _last(_ANSWER_IS_RE if name == "answer_is" else _HASH_RE, text)
    return (_rest_of_line(text, m.end()) or None) if m else None


def last_answer_tag(text: str) -> str | None:
    """Content of the last complete ``<answer>...</answer>`` (found from the end: linear time)."""
    end = text.rfind("</answer>")
    start = text.rfind("<answer>", 0, end) if end >= 0 else -1
    return text[start + len("<answer>") : end] if start >= 0 else None


def _text(text: str, answer: str | LongAnswer) -> str:
    return text[answer.start : answer.end].strip() if isinstance(answer, LongAnswer) else answer


def extract_answer(text: str, fallbacks: tuple[str, ...] | list[str] = ("answer_is",), cap: int = 1_000) -> Extraction:
    """The last ``<answer>`` tag wins (a box inside it preferred), else the last box, else the
    fallbacks in the order given. Boxes longer than ``cap`` are ``LongAnswer`` spans in ``boxed``."""
    boxed = tuple(boxed_answers(text, cap))
    tag = last_answer_tag(text)
    if tag is not None:
        inner = boxed_answers(tag, cap)
        return Extraction((_text(tag, inner[-1]) if inner else tag.strip()) or None, boxed)
    if boxed:
        return Extraction(_text(text, boxed[-1]) or None, boxed)
    for name in fallbacks:
        found = _fallback(text, name)
        if found:
            return Extraction(found, boxed)
    return Extraction(None, boxed)
