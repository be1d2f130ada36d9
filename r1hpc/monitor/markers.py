"""Reflection and verification markers ("wait", "let me verify", "等等", ...) in a response, located
both as characters and as the response tokens they start in.

Latin markers match case-insensitively as whole words (so "wait" does not fire inside "await");
CJK markers have no word boundaries and match anywhere.
"""
from __future__ import annotations

import bisect
import dataclasses
import re
from typing import Sequence

DEFAULT_MARKERS = ("wait", "recheck", "re-check", "re-evaluate", "double-check", "double check", "let me verify",
                   "let me check", "hmm", "等等", "检查", "验证")


@dataclasses.dataclass(frozen=True)
class MarkerHit:
    marker: str  # the configured marker that matched
    start: int  # character offsets in the response text
    end: int


def _is_wordlike(marker: str) -> bool:
    return marker.isascii()


def marker_pattern(markers: Sequence[str]) -> re.Pattern:
    """One alternation, longest markers first so "let me verify" wins over "verify"."""
    if not markers:
        raise ValueError("the marker list is empty")
    parts = []
    for m in sorted(set(markers), key=len, reverse=True):
        body = r"\s+".join(re.escape(w) for w in m.split())
        parts.append(rf"(?<![\w-]){body}(?![\w-])" if _is_wordlike(m) else body)
    return re.compile("|".join(f"({p})" for p in parts), re.IGNORECASE)


def find_markers(text: str, pattern: re.Pattern, markers: Sequence[str]) -> list[MarkerHit]:
    """Non-overlapping marker occurrences in order of position."""
    ordered = sorted(set(markers), key=len, reverse=True)
    return [MarkerHit(ordered[m.lastindex - 1], m.start(), m.end()) for m in pattern.finditer(text)]


class TokenTexts:
    """Character spans of response tokens, from each token id's decoded piece (cached per id).

    Byte-level BPE can split one multi-byte character over two tokens; then the pieces do not
    concatenate to the text and the spans are recomputed by decoding each prefix."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self._pieces: dict[int, str] = {}

    def pieces(self, ids: Sequence[int]) -> list[str]:
        missing = [i for i in set(ids) if i not in self._pieces]
        for i in missing:
            self._pieces[i] = self.tok.decode([i])
        return [self._pieces[i] for i in ids]

    def token_ends(self, ids: Sequence[int], text: str) -> list[int]:
        """End offset in ``text`` (the decoded ``ids``) of each token."""
        pieces = self.pieces(ids)
        if "".join(pieces) == text:
            ends, n = [], 0
            for p in pieces:
                n += len(p)
                ends.append(n)
            return ends
        return [len(self.tok.decode(ids[:k + 1])) for k in range(len(ids))]


def token_index(ends: Sequence[int], char_pos: int) -> int:
    """The token that holds character ``char_pos`` (ends from :meth:`TokenTexts.token_ends`)."""
    return min(bisect.bisect_right(ends, char_pos), max(len(ends) - 1, 0))
