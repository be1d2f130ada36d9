"""Cheap, bounded answer normalisation and the exact fast path for plain numbers.

A training step scores hundreds of arithmetic answers; comparing "1,000", "1000.0", "\\frac{2}{4}"
or "50\\%" needs no sympy. Only linear regexes on length-capped text run here, in-process; anything
that is not a plain number goes to the verifier pool (see ``r1hpc.rewards.math``).
"""
from __future__ import annotations

import re
from fractions import Fraction

_WRAPPERS = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox|mathbf|operatorname)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\[!,;: ]|\\(?:left|right)(?![a-zA-Z])|~")  # not the start of \rightarrow
_DEGREES = re.compile(r"\^\s*\{?\\circ\}?|°|\\circ|\\degree")
# "x =", "\\theta =", "a_1 =", "f(x) =" or "(x, y) =" before the answer (variables only, one '=')
_VAR = r"(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?"
_LHS = re.compile(rf"^(?:{_VAR}(?:\([^()=]*\))?|\(\s*{_VAR}(?:\s*,\s*{_VAR})+\s*\))\s*=\s*(?=[^=]+$)")
# A relation left in an answer after that: "6=5" or "3 \\to 7" is not the number on its right.
_RELATION = re.compile(r"=|\\(?:to|rightarrow|Rightarrow|longrightarrow|implies|mapsto|approx|neq?)(?![a-zA-Z])")
# Digit groups joined by a thin space ("1\\,000", U+2009, U+202F) or "{,}" (LaTeX's comma in maths)
_THIN_GROUP = re.compile(r"(?<=\d)(?:\\,|\\ |\u2009|\u202f|\{,\})(?=\d{3}(?!\d))")
_DECIMAL_COMMA = re.compile(r"(?<=\d)\{,\}(?=\d)")  # "3{,}5" after the thousands groups are joined
_NUM = r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\.\d+"
_PLAIN = re.compile(rf"^(?P<num>{_NUM})(?:\s*/\s*(?P<den>\d+))?(?:\s*(?P<pct>%))?(?P<unit>\s*[a-zA-Z][a-zA-Z .]*)?$")
# Words after a number that are units, not mathematics ("2 pi" is not 2). Glued to the number only
# known units count ("5cm" is 5, "5ab" is not).
_MATH_WORDS = frozenset("pi sqrt ln log sin cos tan cot sec csc exp infty inf i e".split())
_GLUED_UNITS = frozenset("cm mm km kg mg lb lbs ft mph ml hr hrs min sec".split())
# Words after a number that change its value: computed exactly ("12 dozen" is 144, "3 squared" 9) ...
_SCALES = {"dozen": 12, "score": 20, "hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9,
           "trillion": 10**12}
_POWERS = {"squared": 2, "cubed": 3}
# ... or make it something else than that number ("5 and a half", "3 times 4", "7 more"): not a plain number.
_NOT_UNITS = frozenset("and plus minus times over half halves quarter quarters third thirds more less fewer than "
                       "or to point factorial root roots power powers per of".split())
_FRAC = re.compile(r"^(?P<sign>[+-]?)\\frac\s*(?:\{\s*(?P<a>[+-]?\d+)\s*\}|(?P<a1>\d))\s*(?:\{\s*(?P<b>\d+)\s*\}|(?P<b1>\d))\s*(?P<pct>%)?$")


def canonical(answer: str) -> str:
    """Formatting-only normalisation: spacing macros, ``$``, ``\\text{}`` wrappers, ``\\dfrac``,
    degrees, a leading ``x =``, a trailing period, whitespace. Meaning is unchanged."""
    s = answer.strip().strip("$").strip()
    s = _SPACING.sub(" ", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\%", "%").replace("\\$", "")
    s = _WRAPPERS.sub(lambda m: " " + m.group(1) + " ", s)
    s = _DEGREES.sub("", s)
    s = _LHS.sub("", s.strip())
    s = s.strip().rstrip(".").strip()
    return " ".join(s.split())


def plain_number(answer: str) -> tuple[Fraction, bool] | None:
    """(exact value, written as a percentage) for integers, decimals, ``a/b``, ``\\frac{a}{b}``,
    thousands separators (also thin spaces), LaTeX decimal commas (``3{,}5``), scale and power
    words ("5 thousand", "3 squared"), trailing unit words and ``%``/"percent"; None for anything else."""
    s = canonical(_DECIMAL_COMMA.sub(".", _THIN_GROUP.sub("", answer)))
    m = _PLAIN.match(s)
    if m:
        words = (m.group("unit") or "").split()
        scale, power, pct = 1, 1, bool(m.group("pct"))
        while words and words[0].lower() in (*_SCALES, *(w + "s" for w in _SCALES), *_POWERS, "percent"):
            w = words.pop(0).lower()
            if w in _POWERS:
                power *= _POWERS[w]
            elif w == "percent":
                pct = True
            else:
                scale *= _SCALES[w.removesuffix("s")]
        consumed = len(words) < len((m.group("unit") or "").split())
        rest = m.group("unit") if not consumed else (" " + " ".join(words) if words else None)
        if not _is_unit(rest):
            return None
        value = Fraction(m.group("num").replace(",", ""))
        if m.group("den"):
            den = int(m.group("den"))
            if den == 0 or "." in m.group("num"):
                return None
            value /= den
        return (value * scale) ** power, pct
    m = _FRAC.match(s)
    if m:
        den = int(m.group("b") or m.group("b1"))
        if den == 0:
            return None
        value = Fraction(int(m.group("a") or m.group("a1")), den)
        return (-value if m.group("sign") == "-" else value), bool(m.group("pct"))
    return None


def answer_key(answer: str, cap: int = 1_000) -> object:
    """A hashable key under which answers that differ only in formatting coincide ("1,000" and
    "1000.0"; "\\dfrac{1}{2}" and "\\frac{1}{2}"): used to detect several different boxed answers
    and for majority votes. Answers longer than ``cap`` are their own key (not normalised)."""
    if not isinstance(answer, str) or len(answer) > cap:
        return answer  # too long to normalise cheaply (or an extract.LongAnswer span): its own key
    num = plain_number(answer)
    return num if num is not None else canonical(answer)


def _is_unit(unit: str | None) -> bool:
    if not unit:
        return True
    words = [w.rstrip(".") for w in unit.split()]
    if any(len(w) < 2 or not w.isalpha() or w.lower() in _MATH_WORDS or w.lower() in _NOT_UNITS for w in words):
        return False
    return unit[0].isspace() or words[0].lower() in _GLUED_UNITS


def _terminates(x: Fraction) -> bool:
    d = x.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def numbers_equal(a: tuple[Fraction, bool], b: tuple[Fraction, bool]) -> bool | None:
    """Exact equality; a percentage also matches its fraction (50% == 50 == 0.5). None (undecided)
    when they differ and one has no finite decimal expansion: whether 0.333333 counts as 1/3 is
    left to math-verify's rounding rule, so both paths agree."""
    def values(x: tuple[Fraction, bool]) -> set[Fraction]:
        return {x[0], x[0] / 100} if x[1] else {x[0]}

    if values(a) & values(b):
        return True
    if all(_terminates(v) for v in values(a) | values(b)):
        return False
    return None


def qualified_number(answer: str) -> bool:
    """A number followed by words that are not units ("5 and a half", "7 more"): never that number."""
    m = _PLAIN.match(canonical(answer))
    return bool(m and m.group("unit") and any(w.rstrip(".").lower() in _NOT_UNITS for w in m.group("unit").split()))


def has_relation(answer: str) -> bool:
    """Whether an answer still states a relation ("6=5", "3 \\to 7") once a leading "x =" is dropped."""
    return _RELATION.search(canonical(answer)) is not None
