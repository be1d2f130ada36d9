"""A weighted mix of synthetic tasks as a deterministic stream, with a held-out split.

The split is a hash of the problem text, not of the seed or the position in the stream, so a
problem is held out in every run and every seed: training streams never contain an eval problem.
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
from typing import Any, Iterator, Literal

from r1hpc.config import ConfigError
from r1hpc.data.problem import Problem
from r1hpc.data.tasks import TASKS, get_task

Split = Literal["train", "heldout"]
_MAX_REJECTIONS = 1000


@dataclasses.dataclass
class TaskMixConfig:
    """Which tasks, how often, how hard; ``options`` go to a task's generator, e.g.
    ``{"arithmetic": {"ops": ["+", "-"]}, "countdown": {"max_number": 50}}``."""

    tasks: list[str] = dataclasses.field(default_factory=lambda: ["arithmetic", "countdown", "linear_equation"])
    weights: list[float] | None = None  # None: equal weights
    difficulty: dict[str, int] = dataclasses.field(default_factory=dict)  # missing: the task's default
    options: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    seed: int = 0
    heldout_fraction: float = 0.1
    num_train: int | None = None  # None: an endless training stream
    num_heldout: int = 200

    def validate(self) -> None:
        if not self.tasks:
            raise ConfigError("tasks: at least one task is needed")
        for name in [*self.tasks, *self.difficulty, *self.options]:
            if name not in TASKS:
                raise ConfigError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
        if self.weights is not None and (
            len(self.weights) != len(self.tasks) or any(w < 0 for w in self.weights) or sum(self.weights) <= 0
        ):
            raise ConfigError(f"weights: need {len(self.tasks)} non-negative numbers with a positive sum, got {self.weights}")
        if not 0 < self.heldout_fraction < 1:
            raise ConfigError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if (self.num_train is not None and self.num_train < 0) or self.num_heldout < 0:
            raise ConfigError("num_train and num_heldout must be >= 0")
        rng = random.Random(0)
        for name in self.tasks:  # fail at load time, not mid-run, on a bad difficulty or option
            try:
                self.generate(name, rng)
            except (ValueError, TypeError) as e:
                raise ConfigError(f"task {name!r}: {e}") from None

    def generate(self, name: str, rng: random.Random) -> Problem:
        task = get_task(name)
        return task.generate(rng, self.difficulty.get(name, task.default_difficulty), **self.options.get(name, {}))


def is_heldout(problem: Problem, fraction: float) -> bool:
    """Stable membership of the held-out split, from the problem's source and text alone."""
    digest = hashlib.sha256(f"{problem.data_source}\n{problem.question}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def stream(cfg: TaskMixConfig, split: Split = "train", seed: int | None = None) -> Iterator[Problem]:
    """Endless problems of one split; the same config, split and seed give the same sequence."""
    rng = random.Random(f"{cfg.seed if seed is None else seed}:{split}")
    want_heldout = split == "heldout"
    while True:
        for _ in range(_MAX_REJECTIONS):
            name = rng.choices(cfg.tasks, weights=cfg.weights)[0]
            problem = cfg.generate(name, rng)
            if is_heldout(problem, cfg.heldout_fraction) == want_heldout:
                break
        else:
            raise RuntimeError(f"no {split} problem in {_MAX_REJECTIONS} draws: is heldout_fraction extreme?")
        yield problem


def heldout_set(cfg: TaskMixConfig, n: int | None = None) -> list[Problem]:
    """``n`` (default ``cfg.num_heldout``) distinct held-out problems. Drawn with a fixed seed, not
    ``cfg.seed``: runs with different seeds are evaluated on the same problems."""
    n = cfg.num_heldout if n is None else n
    seen: dict[str, Problem] = {}
    draws = 0
    for problem in stream(cfg, "heldout", seed=0):
        if len(seen) == n:
            break
        draws += 1
        if draws > 100 * n + _MAX_REJECTIONS:
            raise RuntimeError(f"only {len(seen)} distinct held-out problems found, {n} asked: raise difficulty")
        seen.setdefault(problem.id, problem)
    return list(seen.values())


def train_problems(cfg: TaskMixConfig, n: int | None = None) -> list[Problem]:
    """The first ``n`` (default ``cfg.num_train``) training problems; repeats are allowed."""
    n = cfg.num_train if n is None else n
    if n is None:
        raise ValueError("num_train is None (an endless stream): use stream(cfg) or pass n")
    it = stream(cfg, "train")
    return [next(it) for _ in range(n)]
