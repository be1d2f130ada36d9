"""A curriculum over the synthetic task mix: draw the GRPO prompts of each task in proportion to how
much that task still teaches.

A group of G responses to one prompt gives a policy gradient only when its rewards differ. For a
prompt solved with probability p the expected group variance of a 0/1 reward is p(1 - p)
("learnability"): zero for tasks the policy always or never solves, largest at p = 1/2. Once a task
saturates (2-digit addition after a few dozen steps of the tiny recipe) its groups are all-correct
and its share of every batch is wasted; the curriculum moves that share to tasks still in reach.
Each task keeps at least ``floor`` of the batch, so a task that drifts back is noticed.

The stream stays deterministic and resumable: every task has its own problem stream (a pure
function of the mix, the task and the seed), the choice of task comes from a seeded RNG, and the
weights depend only on observed rewards, which exact resume reproduces. The held-out set is not
touched: it is drawn from the configured mix, so pass@1 before and after stays comparable.
"""
from __future__ import annotations

import dataclasses
import random
from functools import partial
from typing import Iterator, Literal

from r1hpc.checkpoint.cursor import StreamCursor
from r1hpc.config import ConfigError
from r1hpc.data.mix import TaskMixConfig, stream
from r1hpc.data.problem import Problem


@dataclasses.dataclass
class CurriculumConfig:
    """``learnability``: task weights proportional to the moving average of mean p(1 - p) over the
    task's recent groups (p = a group's mean accuracy), after ``warmup_steps`` at the mix's own
    weights; ``ema`` is the average's per-step decay."""

    kind: Literal["none", "learnability"] = "none"
    floor: float = 0.1
    ema: float = 0.8
    warmup_steps: int = 5

    def validate(self) -> None:
        if not 0 <= self.ema < 1:
            raise ConfigError(f"key 'ema' must be in [0, 1), got {self.ema}")
        if self.warmup_steps < 0:
            raise ConfigError(f"key 'warmup_steps' must be >= 0, got {self.warmup_steps}")

    def check_tasks(self, n_tasks: int) -> None:
        if not 0 <= self.floor * n_tasks <= 1:
            raise ConfigError(f"data.curriculum.floor ({self.floor}) x {n_tasks} tasks must be at most 1")


def _task_stream(mix: TaskMixConfig, task: str, seed: int) -> Iterator[Problem]:
    return stream(dataclasses.replace(mix, tasks=[task], weights=None), "train", seed=seed)


class CurriculumStream:
    """Training problems of the mix with task weights set by ``observe``; resumable like StreamCursor."""

    def __init__(self, mix: TaskMixConfig, cfg: CurriculumConfig, seed: int) -> None:
        cfg.check_tasks(len(mix.tasks))
        self.mix, self.cfg, self.seed = mix, cfg, seed
        self.tasks = list(mix.tasks)
        self.base = list(mix.weights) if mix.weights else [1.0] * len(self.tasks)
        self.per_task = {t: StreamCursor(partial(_task_stream, mix, t, seed * 1009 + i))
                         for i, t in enumerate(self.tasks)}
        self.rng = random.Random(f"curriculum:{seed}")
        self.learnability: dict[str, float | None] = {t: None for t in self.tasks}
        self.observed_steps = 0
        self.drawn = 0

    def __iter__(self) -> "CurriculumStream":
        return self

    def __next__(self) -> Problem:
        task = self.rng.choices(self.tasks, weights=self.weights())[0]
        self.drawn += 1
        return next(self.per_task[task])

    def weights(self) -> list[float]:
        """The current share of each task (sums to 1)."""
        total = sum(self.base)
        if self.observed_steps < self.cfg.warmup_steps or any(v is None for v in self.learnability.values()):
            return [w / total for w in self.base]
        raw = [self.learnability[t] * w for t, w in zip(self.tasks, self.base)]
        if sum(raw) <= 0:
            return [w / total for w in self.base]
        free = 1.0 - self.cfg.floor * len(self.tasks)
        return [self.cfg.floor + free * r / sum(raw) for r in raw]

    def observe(self, stats: dict[str, tuple[float, float]]) -> None:
        """One step's ``task -> (sum over its groups of p(1 - p), number of groups)``, global over ranks."""
        for task, (total, groups) in stats.items():
            if task not in self.learnability or groups <= 0:
                continue
            value = total / groups
            old = self.learnability[task]
            self.learnability[task] = value if old is None else self.cfg.ema * old + (1 - self.cfg.ema) * value
        self.observed_steps += 1

    def state_dict(self) -> dict:
        return {"drawn": self.drawn, "rng": self.rng.getstate(), "learnability": dict(self.learnability),
                "observed_steps": self.observed_steps,
                "per_task": {t: c.state_dict() for t, c in self.per_task.items()}}

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.drawn, self.observed_steps = state["drawn"], state["observed_steps"]
        self.learnability = dict(state["learnability"])
        for t, c in self.per_task.items():
            c.load_state_dict(state["per_task"][t])
