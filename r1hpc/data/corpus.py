"""Worked solutions in the R1-Zero format and the pretraining corpus built from them.

A base model for R1-Zero should know the output format but be weak at the task: RL then has
room to improve past its data (measured on the tiny recipe: a base merely under-trained gave RL
no edge over more supervised steps; one trained on systematically flawed data did). ``flaw_rate`` is
the chance that a worked solution carries its task's systematic error, which always ends in a wrong
answer, so a perfect imitator scores 1 - flaw_rate.
"""
from __future__ import annotations

import dataclasses
import random
import re

from r1hpc.config import ConfigError
from r1hpc.data.mix import TaskMixConfig, heldout_set, stream
from r1hpc.data.problem import Problem
from r1hpc.data.tasks import get_task
from r1hpc.data.templates import TemplateConfig, render_prompt

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@dataclasses.dataclass
class CorpusConfig:
    """The supervised corpus for the base model; drawn from the mix's training split only."""

    flaw_rate: float = 0.6
    size: int = 20000
    seed: int = 1  # differs from the mix's default seed so the corpus is not the RL prompt stream

    def validate(self) -> None:
        if not 0 <= self.flaw_rate <= 1:
            raise ConfigError(f"flaw_rate must be in [0, 1], got {self.flaw_rate}")
        if self.size < 0:
            raise ConfigError(f"size must be >= 0, got {self.size}")


def format_completion(reasoning: str, answer: str) -> str:
    """The R1-Zero output format; it starts with a space because prompts end in "Assistant:"."""
    return f" <think> {reasoning} </think> <answer> {answer} </answer>"


def parse_answer(completion: str) -> str | None:
    """The text inside the last <answer> ... </answer>, stripped; None if there is none."""
    found = _ANSWER.findall(completion)
    return found[-1].strip() if found else None


def worked_solution(problem: Problem, rng: random.Random, flawed: bool) -> str:
    """A completion for ``problem``: clean, or with its task's systematic error."""
    solution = get_task(problem.data_source).solve(problem, rng, flawed)
    return format_completion(solution.reasoning, solution.answer)


def build_corpus(
    mix: TaskMixConfig, cfg: CorpusConfig, template: TemplateConfig, chat_template: str | None = None
) -> list[tuple[str, str]]:
    """``cfg.size`` (prompt_text, completion_text) pairs from the training split; the trainer
    appends the end-of-sequence token to each completion."""
    rng = random.Random(f"corpus:{cfg.seed}")
    problems = stream(mix, "train", seed=cfg.seed)
    pairs = []
    for _ in range(cfg.size):
        problem = next(problems)
        completion = worked_solution(problem, rng, rng.random() < cfg.flaw_rate)
        pairs.append((render_prompt(problem.question, template, chat_template), completion))
    return pairs


def oracle_accuracy(mix: TaskMixConfig, flaw_rate: float, n: int | None = None, seed: int = 0) -> dict[str, float]:
    """Held-out accuracy of a model that writes exactly the corpus's solutions at ``flaw_rate``:
    the base accuracy to expect from a perfect imitator (a real base scores lower). Per task
    and overall ("all"); checked with each task's own checker, not assumed."""
    rng = random.Random(f"oracle:{seed}")
    right: dict[str, list[bool]] = {}
    for problem in heldout_set(mix, n):
        answer = parse_answer(worked_solution(problem, rng, rng.random() < flaw_rate))
        ok = answer is not None and get_task(problem.data_source).check(problem, answer)
        right.setdefault(problem.data_source, []).append(ok)
    report = {name: sum(oks) / len(oks) for name, oks in right.items()}
    total = sum(len(oks) for oks in right.values())
    report["all"] = sum(sum(oks) for oks in right.values()) / total if total else 0.0
    return report
