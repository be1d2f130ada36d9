"""Synthetic tasks: deterministic by seed, and every gold answer checked independently of the
task's own code (Python arithmetic on the question text)."""
import random
import re
from collections import Counter
from fractions import Fraction

import pytest

from r1hpc.data.problem import Problem
from r1hpc.data.tasks import TASKS, get_task
from r1hpc.data.tasks.countdown import evaluate


def _exact(expr: str) -> Fraction:
    """Evaluate an integer expression exactly with Python itself (test-only, trusted input)."""
    assert re.fullmatch(r"[0-9+\-*/() ]+", expr), expr
    return eval(re.sub(r"\d+", lambda m: f"Fraction({m.group()})", expr), {"Fraction": Fraction})


def _problems(name, difficulty, n=300, seed=0, **options):
    rng = random.Random(seed)
    return [get_task(name).generate(rng, difficulty, **options) for _ in range(n)]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_same_seed_same_problems(name):
    d = TASKS[name].default_difficulty
    assert _problems(name, d, 50, seed=3) == _problems(name, d, 50, seed=3)
    assert _problems(name, d, 50, seed=3) != _problems(name, d, 50, seed=4)


@pytest.mark.parametrize("digits", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("ops", [["+"], ["-"], ["*"], ["+", "-", "*"]])
def test_arithmetic_gold(digits, ops):
    for p in _problems("arithmetic", digits, ops=ops):
        m = re.fullmatch(r"Compute (\d+) ([-+*]) (\d+)", p.question)
        a, op, b = int(m[1]), m[2], int(m[3])
        assert op in ops and len(m[1]) == digits and len(m[3]) == (1 if op == "*" else digits)
        assert int(p.answer) == _exact(f"{a}{op}{b}") >= 0
        assert p.data_source == "arithmetic" and p.id.startswith("arithmetic-")


@pytest.mark.parametrize("count", [2, 3, 4, 5, 6])
def test_countdown_gold_reaches_target_using_each_number_at_most_once(count):
    for p in _problems("countdown", count, n=200):
        numbers, target = p.extra["numbers"], p.extra["target"]
        assert len(numbers) == count and f"make {target} " in p.question
        assert " ".join(map(str, numbers)) in p.question
        assert _exact(p.answer) == target
        used = Counter(int(n) for n in re.findall(r"\d+", p.answer))
        assert not used - Counter(numbers)
        assert 1 < target <= 200 and target not in numbers
        values = [Fraction(step.split("=")[1]) for step in evaluate(p.answer)[2]]
        assert all(v > 0 and v.denominator == 1 for v in values)  # the worked trace stays in positive integers
        assert target not in values[:-1]  # and does not pass the target on the way


def test_countdown_magnitude_option():
    for p in _problems("countdown", 4, n=100, max_number=99, max_target=999):
        assert max(p.extra["numbers"]) <= 99 and p.extra["target"] <= 999


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4])
def test_linear_gold_satisfies_the_equation(difficulty):
    for p in _problems("linear_equation", difficulty):
        lhs, rhs = p.question.removeprefix("Solve for x: ").split(" = ")
        x = int(p.answer)

        def at(side, x=x):
            return _exact(side.replace("x", f"({x})"))

        assert at(lhs) == at(rhs)
        assert at(lhs, x + 1) != at(rhs, x + 1)  # one solution only
        assert ("x" in rhs) == (difficulty >= 3)


def test_evaluate_rejects_what_is_not_plain_arithmetic():
    for bad in ["2**3", "-1+2", "abs(3)", "1/0", "1/(2-2)", "x+1", "1.5+2", "", "(" * 500 + "1" + ")" * 500]:
        with pytest.raises(ValueError):
            evaluate(bad)
    assert evaluate("(25-7)*4/3")[:2] == (Fraction(24), [25, 7, 4, 3])


@pytest.mark.parametrize(
    "name,difficulty,options",
    [("arithmetic", 0, {}), ("arithmetic", 2, {"ops": ["/"]}), ("arithmetic", 2, {"ops": []}), ("countdown", 1, {}), ("countdown", 7, {}),
     ("countdown", 3, {"max_number": 1}), ("linear_equation", 0, {})],
)
def test_bad_difficulty_or_option_is_refused(name, difficulty, options):
    with pytest.raises(ValueError):
        get_task(name).generate(random.Random(0), difficulty, **options)


def test_unknown_task_names_the_known_ones():
    with pytest.raises(KeyError, match="countdown"):
        get_task("sudoku")


@pytest.mark.parametrize(
    "name,extra,gold,right,wrong",
    [
        ("arithmetic", {}, "936", ["936", " 936\n"], ["9_36", "936.0", "0936x", "", "٩٣٦"]),
        ("linear_equation", {}, "-4", ["-4", "-8/2", " -4 "], ["-4.0", "x=-4", "4", "1/0", "-4/1/1"]),
        ("countdown", {"numbers": [25, 7, 4, 3], "target": 24}, "(25-7)*4/3", ["(25-7)*4/3", "4*(25-7)/3"],
         ["(25-7)*4/3+0", "25-7*4/3", "(25-7)*4", "24", "(25-7)*4/3=24"]),
    ],
)
def test_checkers(name, extra, gold, right, wrong):
    problem = Problem("p", "q", gold, name, extra)
    assert all(get_task(name).check(problem, a) for a in right)
    assert not any(get_task(name).check(problem, a) for a in wrong)
