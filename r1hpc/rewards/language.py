"""Language consistency (R1): the share of the chain of thought written in the target language.

Units are words for space-delimited scripts and single characters for Chinese, Japanese and Thai,
so a few foreign words weigh as words, not as their letter counts. LaTeX commands are not language.
"""
from __future__ import annotations

import re

_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0e7f"
_TOKEN_RE = re.compile(rf"[{_CJK}]|[^\W\d_{_CJK}]+")
_LATEX_RE = re.compile(r"\\[A-Za-z]+")

# language -> Unicode ranges its letters come from
_SCRIPTS: dict[str, tuple[tuple[int, int], ...]] = {
    "zh": ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF)),
    "ja": ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF)),
    "ko": ((0xAC00, 0xD7AF), (0x1100, 0x11FF), (0x3130, 0x318F)),
    "ru": ((0x0400, 0x04FF),), "uk": ((0x0400, 0x04FF),), "bg": ((0x0400, 0x04FF),),
    "ar": ((0x0600, 0x06FF), (0x0750, 0x077F)), "fa": ((0x0600, 0x06FF), (0x0750, 0x077F)),
    "he": ((0x0590, 0x05FF),), "el": ((0x0370, 0x03FF),), "hi": ((0x0900, 0x097F),), "th": ((0x0E00, 0x0E7F),),
}
_LATIN = ((0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x24F))
_LATIN_LANGS = frozenset("fr de es it pt nl sv da no fi pl cs ro hu tr id vi ms".split())
LANGUAGES = ("en", *sorted(_LATIN_LANGS), *sorted(_SCRIPTS))


def _in(ch: str, ranges: tuple[tuple[int, int], ...]) -> bool:
    o = ord(ch)
    return any(lo <= o <= hi for lo, hi in ranges)


def _matches(token: str, lang: str) -> bool:
    if lang == "en":
        return token.isascii()
    if lang in _LATIN_LANGS:
        return all(_in(c, _LATIN) for c in token)
    return all(_in(c, _SCRIPTS[lang]) for c in token)


def language_share(text: str, lang: str) -> float:
    """Share of words (characters for CJK/Thai) in ``lang``; 1.0 when there are no words at all."""
    if lang not in LANGUAGES:
        raise ValueError(f"unknown language {lang!r}; known: {', '.join(LANGUAGES)}")
    tokens = _TOKEN_RE.findall(_LATEX_RE.sub(" ", text))
    if not tokens:
        return 1.0
    return sum(_matches(t, lang) for t in tokens) / len(tokens)
