"""Linear equations with an integer solution: a*x + b = d, or a*x + b = c*x + d from difficulty 3.

Difficulty scales coefficient and solution sizes (negatives from 2). Solutions collect x on the
left, move the constant, then divide. Moving the constant is worked column by column as in the
arithmetic task when both numbers are non-negative (a tiny model gets one-shot two-digit
differences wrong more often than right), and the division is shown as the product that checks it.
The systematic flaw is a sign error when moving the constant (it keeps its sign), which
propagates to a wrong x.
"""
from __future__ import annotations

import random
import re
from fractions import Fraction

from r1hpc.data.problem import Problem
from r1hpc.data.tasks.arithmetic import column_work
from r1hpc.data.tasks.base import Solution, Task, make_problem


def _term(coef: int) -> str:
    return "x" if coef == 1 else f"{coef}*x"


def _side(coef: int, const: int) -> str:
    """'3*x + 7', '3*x - 7', '2*x' or '12'."""
    if coef == 0:
        return str(const)
    if const == 0:
        return _term(coef)
    return f"{_term(coef)} {'+' if const > 0 else '-'} {abs(const)}"


def generate(rng: random.Random, difficulty: int) -> Problem:
    if difficulty < 1:
        raise ValueError(f"linear_equation difficulty must be >= 1, got {difficulty}")
    size = 10 * difficulty
    signed = difficulty >= 2
    x = rng.randint(-size if signed else 0, size)
    a = rng.randint(2, 4 * difficulty + 1)
    b = rng.choice([n for n in range(-size if signed else 1, size + 1) if n != 0])
    c = rng.randint(1, a - 1) if difficulty >= 3 else 0
    d = (a - c) * x + b
    question = f"Solve for x: {_side(a, b)} = {_side(c, d)}"
    return make_problem("linear_equation", question, str(x), {"a": a, "b": b, "c": c, "d": d})


def _move_constant(k: int, d: int, shown: int) -> str:
    """'k*x = d + shown' worked out: by columns when d and |shown| allow it, else in one step."""
    op, mag = ("+" if shown > 0 else "-"), abs(shown)
    head = f"{_term(k)} = {d} {op} {mag}"
    if d >= 0 and (op == "+" or d >= mag):
        return f"{head}. {column_work(d, op, mag).reasoning}"
    return f"{head} = {d + shown}"


def _divide(moved: int, k: int) -> str:
    x = Fraction(moved, k)
    if x.denominator != 1:
        return f"x = {moved} / {k} = {x}"
    factor = f"({x})" if x < 0 else f"{x}"
    return f"x = {moved} / {k}, {k}*{factor}={moved}, so x = {x}"


def solve(problem: Problem, rng: random.Random, flawed: bool) -> Solution:
    a, b, c, d = (problem.extra[k] for k in "abcd")
    k = a - c
    steps = [f"{_side(a, b)} = {_side(c, d)}"]
    if c:
        steps.append(f"{_term(a)} - {_term(c)} = {_term(k)}, so {_side(k, b)} = {d}")
    sign = -1 if flawed else 1  # the flaw moves b across without changing its sign
    moved = d - sign * b
    steps.append(_move_constant(k, d, -sign * b).rstrip("."))
    if k != 1:
        steps.append(_divide(moved, k))
    return Solution(". ".join(steps) + ".", str(Fraction(moved, k)))


def check(problem: Problem, answer: str) -> bool:
    """The solution as an integer or a fraction p/q (an unreduced one counts)."""
    m = re.fullmatch(r"(-?[0-9]+)(?:/([0-9]+))?", answer.strip())
    if m is None or m[2] is not None and int(m[2]) == 0:
        return False
    return Fraction(int(m[1]), int(m[2] or 1)) == Fraction(problem.answer)


TASK = Task("linear_equation", default_difficulty=2, generate=generate, solve=solve, check=check)
