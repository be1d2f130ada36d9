"""Countdown: reach a target from given numbers with + - * /, each number at most once.

Problems are built from a random expression tree over all the numbers, so a solution always
exists and is stored as the gold answer. Difficulty = how many numbers; option ``max_number``
sets their magnitude. Solutions are a short search trace: a few failed tries, then the tree's own
steps. The systematic flaw is wishful arithmetic: a failed try whose last step is rewritten to
"reach" the target, answered with that (wrong) expression.
"""
from __future__ import annotations

import ast
import operator
import random
from collections import Counter
from fractions import Fraction
from typing import Union

from r1hpc.data.problem import Problem
from r1hpc.data.tasks.base import Solution, Task, make_problem

Expr = Union[int, tuple[str, "Expr", "Expr"]]
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_MAX_TRIES = 1000


def _to_text(expr: Expr) -> str:
    """Infix text with only the parentheses the precedence rules need."""
    if isinstance(expr, int):
        return str(expr)
    op, left, right = expr
    lt, rt = _to_text(left), _to_text(right)
    if not isinstance(left, int) and _PRECEDENCE[left[0]] < _PRECEDENCE[op]:
        lt = f"({lt})"
    if not isinstance(right, int) and (
        _PRECEDENCE[right[0]] < _PRECEDENCE[op] or (_PRECEDENCE[right[0]] == _PRECEDENCE[op] and op in "-/")
    ):
        rt = f"({rt})"
    return f"{lt}{op}{rt}"


def _combine(rng: random.Random, x: tuple[int, Expr], y: tuple[int, Expr]) -> tuple[tuple[int, Expr], str]:
    """A random valid operation on two (value, expression) items; results stay positive integers."""
    if x[0] < y[0]:
        x, y = y, x
    choices = ["+", "*"] + (["-"] if x[0] > y[0] else []) + (["/"] if y[0] > 1 and x[0] % y[0] == 0 else [])
    op = rng.choice(choices)
    if op in "+*" and rng.random() < 0.5:
        x, y = y, x
    value = (operator.floordiv if op == "/" else _APPLY[op])(x[0], y[0])  # "/" is exact here
    return (value, (op, x[1], y[1])), f"{x[0]}{op}{y[0]}={value}"


def _random_walk(rng: random.Random, numbers: list[int]) -> tuple[Expr, int, list[str]]:
    """Combine all numbers pairwise at random -> (expression, value, step texts)."""
    pool: list[tuple[int, Expr]] = [(n, n) for n in numbers]
    steps = []
    while len(pool) > 1:
        i, j = sorted(rng.sample(range(len(pool)), 2), reverse=True)
        item, step = _combine(rng, pool.pop(i), pool.pop(j))
        pool.append(item)
        steps.append(step)
    return pool[0][1], pool[0][0], steps


def generate(rng: random.Random, difficulty: int, max_number: int = 20, max_target: int = 200) -> Problem:
    if not 2 <= difficulty <= 6:
        raise ValueError(f"countdown difficulty (count of numbers) must be in 2..6, got {difficulty}")
    if max_number < 2 or max_target < 2:
        raise ValueError(f"countdown max_number and max_target must be >= 2, got {max_number}, {max_target}")
    for _ in range(_MAX_TRIES):
        numbers = [rng.randint(1, max_number) for _ in range(difficulty)]
        expr, target, _ = _random_walk(rng, numbers)
        answer = _to_text(expr)
        # the gold trace (steps of the printed answer) must not reach the target before its end
        early = any(step.endswith(f"={target}") for step in evaluate(answer)[2][:-1])
        if 1 < target <= max_target and target not in numbers and not early:
            question = f"Use {' '.join(map(str, numbers))} to make {target} with + - * /, each number at most once"
            return make_problem("countdown", question, answer, {"numbers": numbers, "target": target})
    raise RuntimeError(f"no countdown problem with {difficulty} numbers <= {max_number} reaching <= {max_target}")


_AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def evaluate(text: str) -> tuple[Fraction, list[int], list[str]]:
    """Exact value of an arithmetic expression, the integers it uses and its steps ('a op b=c',
    innermost first). ValueError unless it is integers joined by + - * /."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError) as e:
        raise ValueError(f"not an expression: {text!r}") from e
    used: list[int] = []
    steps: list[str] = []

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
            left, right = walk(node.left), walk(node.right)
            op = _AST_OPS[type(node.op)]
            if op == "/" and right == 0:
                raise ValueError(f"division by zero in {text!r}")
            value = _APPLY[op](left, right)
            steps.append(f"{left}{op}{right}={value}")
            return value
        raise ValueError(f"only integers and + - * / are allowed: {text!r}")

    try:
        return walk(tree), used, steps
    except RecursionError as e:
        raise ValueError(f"expression too deep: {text[:50]!r}...") from e


def check(problem: Problem, answer: str) -> bool:
    try:
        value, used, _ = evaluate(answer)
    except ValueError:
        return False
    return value == problem.extra["target"] and not Counter(used) - Counter(problem.extra["numbers"])


def _failed_try(rng: random.Random, numbers: list[int], target: int) -> tuple[Expr, int, list[str]]:
    """A random try that never passes through the target (a search would have stopped there)."""
    for _ in range(_MAX_TRIES):
        expr, value, steps = _random_walk(rng, numbers)
        if not any(step.endswith(f"={target}") for step in steps):
            return expr, value, steps
    raise RuntimeError(f"every try of {numbers} reaches {target}")


def solve(problem: Problem, rng: random.Random, flawed: bool) -> Solution:
    numbers, target = problem.extra["numbers"], problem.extra["target"]
    tries = [_failed_try(rng, numbers, target) for _ in range(rng.randint(0, 2) + flawed)]
    lines = [", ".join(steps) + " no" for _, _, steps in tries]
    if flawed:
        expr, _, steps = tries[-1]
        lines[-1] = ", ".join(steps[:-1] + [steps[-1].rsplit("=", 1)[0] + f"={target}"]) + " yes"
        return Solution(". ".join(lines) + ".", _to_text(expr))
    lines.append(", ".join(evaluate(problem.answer)[2]) + " yes")
    return Solution(". ".join(lines) + ".", problem.answer)


TASK = Task("countdown", default_difficulty=4, generate=generate, solve=solve, check=check)
