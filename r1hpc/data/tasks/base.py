"""What every synthetic task provides, so the sampler, the corpus and the tests treat them alike."""
from __future__ import annotations

import dataclasses
import hashlib
import random
from typing import Any, Callable, NamedTuple

from r1hpc.data.problem import Problem


class Solution(NamedTuple):
    """A worked solution: the reasoning that goes between <think> tags and the final answer."""

    reasoning: str
    answer: str


@dataclasses.dataclass(frozen=True)
class Task:
    """A verifiable task family.

    ``generate(rng, difficulty, **options)`` draws one problem; ``solve(problem, rng, flawed)``
    writes a step-by-step solution (with ``flawed=True`` it carries the task's systematic error and
    always ends in a wrong answer); ``check(problem, answer)`` says whether an answer text is right.
    """

    name: str
    default_difficulty: int
    generate: Callable[..., Problem]
    solve: Callable[[Problem, random.Random, bool], Solution]
    check: Callable[[Problem, str], bool]


def make_problem(task: str, question: str, answer: str, extra: dict[str, Any] | None = None) -> Problem:
    """A Problem whose id is a hash of its text: the same question always gets the same id."""
    digest = hashlib.sha1(f"{task}\n{question}".encode()).hexdigest()[:12]
    return Problem(id=f"{task}-{digest}", question=question, answer=answer, data_source=task, extra=extra or {})
