"""Multi-digit addition, subtraction and short multiplication (by one digit); difficulty = digits
per operand (of the first operand for multiplication).

Solutions go column by column from the right, as a child would on paper. The systematic flaw
drops every carry (borrow); where there is none to drop, a units-digit slip stands in, so a
flawed solution is always wrong.
"""
from __future__ import annotations

import random
import re

from r1hpc.data.problem import Problem
from r1hpc.data.tasks.base import Solution, Task, make_problem


def generate(rng: random.Random, difficulty: int, ops: list[str] | tuple[str, ...] = ("+",)) -> Problem:
    if difficulty < 1:
        raise ValueError(f"arithmetic difficulty (digits) must be >= 1, got {difficulty}")
    if not ops or set(ops) - set(_WORK):
        raise ValueError(f"arithmetic ops must be a non-empty subset of {sorted(_WORK)}, got {list(ops)}")
    lo, hi = 10 ** (difficulty - 1), 10**difficulty - 1
    op = rng.choice(sorted(ops))
    a, b = rng.randint(lo, hi), rng.randint(2, 9) if op == "*" else rng.randint(lo, hi)
    if op == "-" and a < b:
        a, b = b, a
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return make_problem("arithmetic", f"Compute {a} {op} {b}", str(value), {"a": a, "b": b, "op": op})


def _columns(a: int, b: int) -> list[tuple[int, int]]:
    """Digit pairs from the units column up, the shorter number padded with zeros."""
    da, db = str(a)[::-1], str(b)[::-1]
    width = max(len(da), len(db))
    return [(int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0) for i in range(width)]


def _finish(steps: list[str], digits: list[str]) -> Solution:
    result = str(int("".join(reversed(digits))))
    return Solution(". ".join(steps) + f". Result {result}.", result)


def _carry_work(columns: list[tuple[str, int]], drop_carries: bool, slip: bool) -> Solution:
    """Column work for + and *: ``columns`` are each column's (expression, value) before the
    incoming carry, units first."""
    steps, digits, carry = [], [], 0
    for i, (expr, value) in enumerate(columns):
        total = value + carry
        expr += f"+{carry}" if carry else ""
        digit = (total + 1) % 10 if slip and i == 0 else total % 10
        carry = 0 if drop_carries else total // 10
        steps.append(f"{expr}={total}, write {digit}" + (f", carry {carry}" if carry else ""))
        digits.append(str(digit))
    if carry:
        steps.append(f"write carry {carry}")
        digits.append(str(carry))
    return _finish(steps, digits)


def _add(a: int, b: int, drop_carries: bool, slip: bool) -> Solution:
    return _carry_work([(f"{x}+{y}", x + y) for x, y in _columns(a, b)], drop_carries, slip)


def _multiply(a: int, b: int, drop_carries: bool, slip: bool) -> Solution:
    """``a`` times the single digit ``b``."""
    return _carry_work([(f"{x}*{b}", x * b) for x, _ in _columns(a, 0)], drop_carries, slip)


def _subtract(a: int, b: int, drop_borrows: bool, slip: bool) -> Solution:
    steps, digits, borrow = [], [], 0
    for i, (x, y) in enumerate(_columns(a, b)):
        top = x - borrow
        expr = f"{x}-{borrow}-{y}" if borrow else f"{x}-{y}"
        if top < y:
            step, digit, borrow = f"{expr} borrow, {top + 10}-{y}={top + 10 - y}", top + 10 - y, 1
        else:
            step, digit, borrow = f"{expr}={top - y}", top - y, 0
        if slip and i == 0:
            digit = (digit + 1) % 10
        if drop_borrows:
            borrow = 0
        steps.append(f"{step}, write {digit}")
        digits.append(str(digit))
    return _finish(steps, digits)


_WORK = {"+": _add, "-": _subtract, "*": _multiply}


def column_work(a: int, op: str, b: int) -> Solution:
    """The clean column-by-column working of ``a op b`` (a >= b >= 0 for "-"), for other tasks'
    solutions: a tiny model that learned the columns here can run them there too."""
    if a < 0 or b < 0 or op == "-" and a < b:
        raise ValueError(f"column work needs non-negative operands (a >= b for '-'), got {a} {op} {b}")
    return _WORK[op](a, b, False, False)


def solve(problem: Problem, rng: random.Random, flawed: bool) -> Solution:
    a, b, op = problem.extra["a"], problem.extra["b"], problem.extra["op"]
    work = _WORK[op]
    clean = work(a, b, False, False)
    if not flawed:
        return clean
    dropped = work(a, b, True, False)
    return dropped if dropped.answer != clean.answer else work(a, b, False, True)


def check(problem: Problem, answer: str) -> bool:
    """Exactly the integer, digits only (int() alone would also take '9_36' or '٩')."""
    text = answer.strip()
    return re.fullmatch(r"-?[0-9]+", text) is not None and int(text) == int(problem.answer)


TASK = Task("arithmetic", default_difficulty=3, generate=generate, solve=solve, check=check)
