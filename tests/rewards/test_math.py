import time
from fractions import Fraction

import pytest
from hypothesis import given, settings, strategies as st

from r1hpc.config import ConfigError
from r1hpc.rewards.math import MathConfig, math_reward, math_reward_batch, prepare, verify_pair
from r1hpc.rewards.normalize import plain_number

# (gold, predicted answer, equivalent?)
CASES = [
    # integers, signs, separators
    ("42", "42", True), ("42", "042", True), ("42", "43", False), ("-7", "-7", True), ("-7", "7", False),
    ("1000", "1,000", True), ("1234567", "1,234,567", True), ("1000", "1.000", False), ("+5", "5", True),
    ("0", "-0", True), ("12", "12.0", True), ("12", "12.5", False),
    # decimals
    ("0.5", ".5", True), ("0.5", "0.50", True), ("3.14", "3.14", True), ("3.14", "3.15", False),
    ("2.5", "2.50000", True), ("-0.25", "-.25", True),
    # fractions
    ("1/2", "0.5", True), (r"\frac{1}{2}", "0.5", True), (r"\frac{1}{2}", r"\dfrac{1}{2}", True),
    (r"\frac{1}{2}", r"\tfrac12", True), (r"\frac{2}{4}", r"\frac{1}{2}", True), (r"-\frac{3}{4}", "-0.75", True),
    (r"\frac{-3}{4}", "-3/4", True), (r"\frac{1}{3}", "0.333", False), (r"\frac{1}{3}", "0.333333", True),
    ("2/3", "0.666667", True), ("2/3", "0.6667", False), (r"\frac{1}{2}", r"\frac{1}{3}", False),
    ("3/4", "6/8", True), ("7/2", "3.5", True), ("7/2", "2/7", False),
    # percentages
    ("50", r"50\%", True), (r"50\%", "50", True), (r"50\%", "0.5", True), ("25%", "25", True),
    ("0.5", "50", False), ("12.5", r"12.5\%", True),
    # units and text
    ("5", r"5\text{ cm}", True), ("5", "5 cm", True), ("18", r"\$18", True), ("18", "18 dollars", True),
    ("90", r"90^\circ", True), ("90", r"90^{\circ}", True), ("3", r"3\text{ hours}", True),
    ("10", r"10\,\text{m}", True), ("5", "5cm", True), ("2", "2 pi", False), ("6", "6 inches", True),
    ("5", r"\text{5}", True), ("5", "6 cm", False),
    # equations and dollars signs
    ("3", "x = 3", True), ("3", "x=4", False), ("3", "$3$", True), ("-2", r"y = -2", True),
    # radicals and LaTeX forms
    (r"\sqrt{2}", r"\sqrt2", True), (r"\frac{\sqrt{2}}{2}", r"\sqrt{2}/2", True), (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}", True),
    (r"2\sqrt{3}", r"\sqrt{12}", True), (r"\sqrt{3}", r"\sqrt{2}", False), (r"\pi", r"\pi", True),
    (r"2\pi", r"\pi \cdot 2", True), (r"\pi", "3.14", False), (r"\frac{\pi}{2}", r"\pi/2", True),
    (r"10^{3}", "1000", True), (r"2^{10}", "1024", True), (r"2^{10}", "1000", False), (r"e^{2}", r"e^2", True),
    (r"\left(\frac{1}{2}\right)^2", r"\frac{1}{4}", True), (r"\log_2 8", "3", True), (r"3!", "6", True),
    (r"\binom{5}{2}", "10", True), (r"\sqrt[3]{27}", "3", True), (r"\frac{3}{\sqrt{3}}", r"\sqrt{3}", True),
    # expressions
    ("x^2+2x+1", "(x+1)^2", True), ("x^2-1", "(x-1)(x+1)", True), ("2x+1", "1+2x", True), ("2x+1", "2x-1", False),
    (r"\frac{x}{2}", "0.5x", True), ("a+b", "b+a", True), ("3a", "a+a+a", True), ("x^2", "x^3", False),
    # intervals
    ("[1,2)", "[1, 2)", True), ("[1,2)", "[1,2]", False), (r"(-\infty, 3]", r"(-\infty,3]", True),
    (r"(0,\infty)", r"(0, \infty)", True), (r"[0,1]\cup[2,3]", r"[0,1] \cup [2,3]", True), ("(1,5)", "[1,5]", False),
    # sets
    (r"\{1,2,3\}", r"\{3,2,1\}", True), (r"\{1,2\}", r"\{1,2,3\}", False), (r"\{-1, 1\}", r"\{1,-1\}", True),
    # tuples / points
    ("(1,2)", "(1, 2)", True), ("(3,-4)", "(3, -4)", True), (r"(\frac{1}{2}, 3)", "(0.5, 3)", True), ("(1,2,3)", "(1,2,4)", False),
    # matrices
    (r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", r"\begin{pmatrix}1 & 2\\ 3 & 4\end{pmatrix}", True),
    (r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", r"\begin{pmatrix}1&2\\3&5\end{pmatrix}", False),
    (r"\begin{pmatrix}1\\0\end{pmatrix}", r"\begin{bmatrix}1\\0\end{bmatrix}", True),
    # text answers
    (r"\text{(B)}", r"\text{(B)}", True), ("B", "B", True), ("B", "C", False),
    # complex numbers
    ("3+4i", "4i+3", True), ("3+4i", "3-4i", False), ("2+i", "i+2", True),
]


@pytest.mark.parametrize("gold,pred,same", CASES, ids=[f"{g}|{p}" for g, p, _ in CASES])
def test_equivalence(gold, pred, same, pool):
    # a generous limit: these check equivalence, not speed (CI machines can be busy)
    assert math_reward(rf"Thus the result is \boxed{{{pred}}}.", gold, pool=pool, timeout_s=30) == float(same)


def test_case_count():
    assert len(CASES) >= 100


def test_batch_matches_singles_and_keeps_order(pool):
    responses = [rf"\boxed{{{p}}}" for _, p, _ in CASES]
    assert math_reward_batch(responses, [g for g, _, _ in CASES], pool=pool, timeout_s=30) == [float(s) for _, _, s in CASES]


def test_plain_numbers_never_reach_the_pool():
    cfg = MathConfig()
    for resp, gold in [(r"\boxed{1,000}", "1000"), (r"\boxed{\frac{1}{2}}", "0.5"), (r"\boxed{7}", "8"), ("<answer>12</answer>", "12")]:
        assert not isinstance(prepare(resp, gold, cfg), tuple)
    assert isinstance(prepare(r"\boxed{\sqrt{4}}", "2", cfg), tuple)
    assert isinstance(prepare(r"\boxed{0.333333}", "1/3", cfg), tuple)  # math-verify's rounding rule decides


def test_spraying_earns_nothing(pool):
    assert math_reward(r"\boxed{1} or \boxed{2} or \boxed{3}", "3", pool=pool) == 0.0
    assert math_reward(r"\boxed{3} ... so \boxed{3}", "3", pool=pool) == 1.0
    assert math_reward(r"\boxed{0.5} i.e. \boxed{\frac{1}{2}}", "1/2", pool=pool) == 1.0
    assert math_reward(r"<think>\boxed{4}</think><answer>\boxed{5}</answer>", "5", pool=pool) == 0.0


def test_no_answer_and_oversized_inputs(pool):
    assert math_reward("I do not know", "3", pool=pool) == 0.0
    assert math_reward(r"\boxed{" + "1+" * 5000 + "1}", "5001", pool=pool) == 0.0
    assert math_reward("blah " * 2_000_000 + r"\boxed{7}", "7", pool=pool) == 1.0
    assert math_reward("{" * 500_000 + r"\boxed{7}", "7", pool=pool) == 1.0
    assert math_reward(r"\boxed{" + "1" * 150_000 + "x} then " + r"\boxed{7}", "7", pool=pool) == 0.0
    assert math_reward(r"\boxed{" + "9" * 150_000 + "}", "9", pool=pool) == 0.0


def test_hanging_sympy_is_killed_and_pool_keeps_serving(pool):
    timeouts = pool.timeouts
    t0 = time.monotonic()
    assert math_reward(r"\boxed{9^{9^{9^{9}}}}", "5", timeout_s=2.0, pool=pool) == 0.0
    assert time.monotonic() - t0 < 2.0 + 1.0
    assert pool.timeouts == timeouts + 1
    assert math_reward(r"\boxed{\sqrt{2}/2}", r"\frac{\sqrt{2}}{2}", pool=pool) == 1.0
    assert math_reward_batch([r"\boxed{x+1}"] * 4, ["1+x"] * 4, pool=pool) == [1.0] * 4


def test_batch_deadline_scores_zero(pool):
    deadline = time.monotonic() + 1.0
    scores = math_reward_batch([r"\boxed{9^{9^{9^{9}}}}"] * 3 + [r"\boxed{4}"], ["1"] * 3 + ["4"], pool=pool,
                               timeout_s=30, deadline=deadline)
    assert scores == [0.0, 0.0, 0.0, 1.0]
    assert time.monotonic() < deadline + 1.0


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown"):
        MathConfig(fallbacks=["nope"]).validate()
    with pytest.raises(ConfigError):
        MathConfig(timeout_s=0).validate()


@settings(deadline=None)  # correctness, not speed: a busy machine must not fail it
@given(st.fractions(max_denominator=1000).filter(lambda f: abs(f) < 10**9))
def test_fast_path_fractions_roundtrip(f):
    assert plain_number(f"{f.numerator}/{f.denominator}")[0] == f
    assert plain_number(rf"\frac{{{f.numerator}}}{{{f.denominator}}}")[0] == f


@settings(deadline=None)  # correctness, not speed: a busy machine must not fail it
@given(st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=-10**6, max_value=10**6))
def test_fast_path_decimals_exact(d):
    assert plain_number(str(d))[0] == Fraction(d)


def _written(value: Fraction, style: int) -> str:
    if style == 0 or value.denominator == 1:
        return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
    if style == 1:
        sign = "-" if value < 0 else ""
        return rf"{sign}\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"
    return f"{float(value):.6f}"


@settings(max_examples=60, deadline=None)
@given(st.fractions(min_value=-1000, max_value=1000, max_denominator=12), st.fractions(min_value=-1000, max_value=1000, max_denominator=12),
       st.integers(0, 2), st.integers(0, 2), st.booleans())
def test_fast_path_agrees_with_math_verify(a, b, style_a, style_b, same):
    gold, pred = _written(a, style_a), _written(a if same else b, style_b)
    decided = prepare(rf"\boxed{{{pred}}}", gold, MathConfig())
    if not isinstance(decided, tuple):
        assert decided == float(verify_pair(gold, pred)), (gold, pred)


# Wrong answers that trailing words or a relation used to pass, and number/matrix forms accepted since.
TIGHTENED = [
    ("12", "12 dozen", False), ("144", "12 dozen", True), ("5", "5 thousand", False), ("5000", "5 thousand", True),
    ("5000", "5 thousand dollars", True), ("3", "3 squared", False), ("9", "3 squared", True), ("27", "3 cubed", True),
    ("5", "5 and a half", False), ("7", "7 more", False), ("3", "3 times", False), ("50%", "50 percent", True),
    ("5", "6=5", False), ("7", r"3 \to 7", False), ("7", r"3 \rightarrow 7", False), ("5", r"x \approx 5", False),
    ("5", "x = 5", True), ("30", r"\theta = 30^\circ", True), ("4", "f(2) = 4", True), ("-1", "a_1 = -1", True),
    ("(5,8)", "(x, y) = (5, 8)", True), ("(5,8)", r"(x,\ y)=(5,8)", True), ("(5,8)", "(x, y) = (5, 9)", False),
    ("(3,2)", "(1, 2) = (3, 2)", False),
    ("1000000", r"1\,000\,000", True), ("1000000", "1\u2009000\u2009000", True), ("1000", "1{,}000", True),
    ("3.5", "3{,}5", True), ("3.25", "3{,}25", True), ("3.5", "3{,}6", False),
    (r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", r"\begin{bmatrix}1&2\\3&4\end{bmatrix}", True),
    (r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", r"\left(\begin{array}{cc}1&2\\3&4\end{array}\right)", True),
    (r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", r"\left[\begin{array}{cc}1&2\\3&5\end{array}\right]", False),
]


@pytest.mark.parametrize("gold,pred,same", TIGHTENED, ids=[f"{g}|{p}" for g, p, _ in TIGHTENED])
def test_units_relations_and_number_forms(gold, pred, same, pool):
    assert math_reward(rf"<answer>{pred}</answer>", gold, pool=pool, timeout_s=30) == float(same)
    assert math_reward(rf"so \boxed{{{pred}}}", gold, pool=pool, timeout_s=30) == float(same)


def test_deeply_nested_boxes_are_extracted_in_one_pass(pool):
    # 25,000 nested boxes: quadratic extraction copied ~300 MB of text here; linear takes milliseconds
    # (benchmarks/bench_rewards.py prints the time; no timed assert)
    deep = r"\boxed{" * 25_000 + "7" + "}" * 25_000
    assert prepare(deep, "7", MathConfig()) == 0.0  # boxes with different contents: anti-spraying
    assert prepare("<answer>" + deep + "</answer>", "7", MathConfig()) == 0.0
    assert math_reward(r"\boxed{7}" + " x" * 50_000, "7", pool=pool) == 1.0
