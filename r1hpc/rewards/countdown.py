"""Countdown accuracy: the ``<answer>`` expression combines the given numbers with + - * / and
parentheses into the target.

Parsed with ``ast`` (never ``eval``) and evaluated with exact ``Fraction`` arithmetic; the
expression length is capped and only the given numbers may appear, so the work is bounded.
"""
from __future__ import annotations

import ast
from collections import Counter
from fractions import Fraction
from typing import Sequence

from r1hpc.rewards.extract import last_answer_tag

_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b}


class _Rejected(Exception):
    """The expression uses something other than the given numbers, + - * / and parentheses."""


def _evaluate(node: ast.AST, used: list[int]) -> Fraction:
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _evaluate(node.left, used), _evaluate(node.right, used)
        if isinstance(node.op, ast.Div) and right == 0:
            raise _Rejected("division by zero")
        return _OPS[type(node.op)](left, right)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    raise _Rejected(type(node).__name__)


def countdown_reward(response: str, numbers: Sequence[int], target: int, *, exact_use: bool = False,
                     max_expr_chars: int = 200) -> float:
    """1.0 if the expression equals ``target`` using each number at most once (exactly once
    with ``exact_use``), else 0.0. A trailing "= target" is allowed."""
    answer = last_answer_tag(response)
    if answer is None:
        return 0.0
    expr = answer.split("=")[0].strip()
    if not expr or len(expr) > max_expr_chars:
        return 0.0
    try:
        used: list[int] = []
        value = _evaluate(ast.parse(expr, mode="eval").body, used)
    except (SyntaxError, ValueError, MemoryError, RecursionError, _Rejected):
        return 0.0
    available, seen = Counter(int(n) for n in numbers), Counter(used)
    if seen - available or (exact_use and seen != available):
        return 0.0
    return float(value == target)
