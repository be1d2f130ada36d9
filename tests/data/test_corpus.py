"""Worked solutions: clean ones reach the gold answer, flawed ones never do, at the asked rate."""
import itertools
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1hpc.config import ConfigError, from_dict
from r1hpc.data.corpus import CorpusConfig, build_corpus, oracle_accuracy, parse_answer, worked_solution
from r1hpc.data.problem import Problem
from r1hpc.data.mix import TaskMixConfig, heldout_set, is_heldout, stream
from r1hpc.data.tasks import TASKS, get_task
from r1hpc.data.templates import SHORT_PREFIX, SHORT_SUFFIX, TemplateConfig

FORMAT = re.compile(r" <think> [^<>]+ </think> <answer> [^<>]+ </answer>")
HARD = TaskMixConfig(
    difficulty={"arithmetic": 4, "countdown": 5, "linear_equation": 3}, options={"arithmetic": {"ops": ["+", "-", "*"]}}
)


@pytest.mark.parametrize("mix", [TaskMixConfig(), HARD], ids=["default", "hard"])
@pytest.mark.parametrize("flawed", [False, True])
def test_clean_solutions_are_right_and_flawed_ones_wrong(mix, flawed):
    rng = random.Random(0)
    problems = list(itertools.islice(stream(mix), 600))
    for problem in problems:
        completion = worked_solution(problem, rng, flawed)
        assert FORMAT.fullmatch(completion), completion
        answer = parse_answer(completion)
        assert get_task(problem.data_source).check(problem, answer) != flawed, (problem, completion)
        if not flawed and problem.data_source != "countdown":
            assert answer == problem.answer


def test_flawed_arithmetic_drops_carries():
    problem = Problem("a-1", "Compute 347 + 589", "936", "arithmetic", {"a": 347, "b": 589, "op": "+"})
    clean = worked_solution(problem, random.Random(0), False)
    assert clean == " <think> 7+9=16, write 6, carry 1. 4+8+1=13, write 3, carry 1. 3+5+1=9, write 9. Result 936. </think> <answer> 936 </answer>"
    flawed = worked_solution(problem, random.Random(0), True)
    assert "carry" not in flawed and parse_answer(flawed) == "826"
    times = Problem("a-2", "Compute 347 * 6", "2082", "arithmetic", {"a": 347, "b": 6, "op": "*"})
    assert worked_solution(times, random.Random(0), False) == (
        " <think> 7*6=42, write 2, carry 4. 4*6+4=28, write 8, carry 2. 3*6+2=20, write 0, carry 2. "
        "write carry 2. Result 2082. </think> <answer> 2082 </answer>"
    )
    assert parse_answer(worked_solution(times, random.Random(0), True)) == "842"


def test_linear_equation_moves_the_constant_by_columns_and_checks_the_division():
    clean = worked_solution(Problem("l-1", "Solve for x: 4*x + 9 = 37", "7", "linear_equation",
                                    {"a": 4, "b": 9, "c": 0, "d": 37}), random.Random(0), False)
    assert clean == (" <think> 4*x + 9 = 37. 4*x = 37 - 9. 7-9 borrow, 17-9=8, write 8. 3-1-0=2, write 2. "
                     "Result 28. x = 28 / 4, 4*7=28, so x = 7. </think> <answer> 7 </answer>")
    flawed = worked_solution(Problem("l-1", "Solve for x: 4*x + 9 = 37", "7", "linear_equation",
                                     {"a": 4, "b": 9, "c": 0, "d": 37}), random.Random(0), True)
    assert "4*x = 37 + 9. 7+9=16, write 6, carry 1." in flawed and parse_answer(flawed) == "23/2"
    negative = worked_solution(Problem("l-2", "Solve for x: 6*x + 15 = -69", "-14", "linear_equation",
                                       {"a": 6, "b": 15, "c": 0, "d": -69}), random.Random(0), False)
    assert "6*x = -69 - 15 = -84. x = -84 / 6, 6*(-14)=-84, so x = -14." in negative  # no columns below zero


@pytest.mark.parametrize("flaw_rate", [0.0, 0.3, 0.6, 1.0])
def test_corpus_flaw_rate_is_the_share_of_wrong_answers(flaw_rate):
    mix = TaskMixConfig()
    pairs = build_corpus(mix, CorpusConfig(flaw_rate=flaw_rate, size=1500), TemplateConfig(kind="short"))
    problems = list(itertools.islice(stream(mix, seed=CorpusConfig().seed), 1500))
    wrong = 0
    for problem, (prompt, completion) in zip(problems, pairs):
        assert prompt == SHORT_PREFIX + problem.question + SHORT_SUFFIX
        wrong += not get_task(problem.data_source).check(problem, parse_answer(completion))
    assert abs(wrong / len(pairs) - flaw_rate) < 0.04


def test_corpus_is_deterministic_and_from_the_training_split_only():
    mix, cfg = TaskMixConfig(heldout_fraction=0.3), CorpusConfig(size=500)
    pairs = build_corpus(mix, cfg, TemplateConfig())
    assert pairs == build_corpus(mix, cfg, TemplateConfig())
    assert pairs != build_corpus(mix, CorpusConfig(size=500, seed=2), TemplateConfig())
    held_questions = {p.question for p in heldout_set(mix, 100)}
    assert not any(q in prompt for prompt, _ in pairs for q in held_questions)
    assert not any(is_heldout(p, 0.3) for p in itertools.islice(stream(mix, seed=cfg.seed), 500))


def test_oracle_accuracy_is_one_minus_flaw_rate():
    report = oracle_accuracy(TaskMixConfig(), 0.65, n=900)
    assert set(report) == set(TASKS) | {"all"}
    assert abs(report["all"] - 0.35) < 0.05
    assert oracle_accuracy(TaskMixConfig(), 0.0, n=100)["all"] == 1.0


def test_parse_answer_takes_the_last_answer():
    assert parse_answer(" <think> a </think> <answer> 1 </answer> <answer>\n 2 </answer>") == "2"
    assert parse_answer("<answer> 3") is None


def test_corpus_config_is_checked():
    with pytest.raises(ConfigError, match="flaw_rate"):
        from_dict(CorpusConfig, {"flaw_rate": 1.5})


@settings(max_examples=150, deadline=None, database=None)
@given(
    name=st.sampled_from(sorted(TASKS)),
    difficulty=st.integers(2, 6),
    seed=st.integers(0, 2**32),
    flawed=st.booleans(),
)
def test_any_seed_and_difficulty_solution_is_right_iff_clean(name, difficulty, seed, flawed):
    rng = random.Random(seed)
    problem = get_task(name).generate(rng, difficulty)
    answer = parse_answer(worked_solution(problem, rng, flawed))
    assert get_task(name).check(problem, answer) != flawed
