"""Which rewards each data source gets, and the scorer the trainer calls once per GRPO step.

``RewardsConfig.sources`` maps a ``Problem.data_source`` to weighted terms; each term's score lands
under its own key ("accuracy", "format", "language", ...) and "total" is the weighted sum.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Callable, Literal, Sequence

from r1hpc.config import ConfigError
from r1hpc.data.problem import Problem
from r1hpc.rewards.code import CodeBatchStats, CodeConfig, code_reward_batch
from r1hpc.rewards.countdown import countdown_reward
from r1hpc.rewards.format import FormatConfig, format_reward
from r1hpc.rewards.judge_model import JudgeModelConfig
from r1hpc.rewards.language import LANGUAGES, language_share
from r1hpc.rewards.math import MathConfig, math_pool, math_reward_batch
from r1hpc.rewards.model_based import JudgeReward, ScalarRewardModel, ScoreFn, as_score_fn
from r1hpc.rewards.spans import select_span

# term name -> the key its score is reported under unless the term names one
TERM_KEYS = {"math": "accuracy", "code": "accuracy", "countdown": "accuracy", "format": "format",
             "language": "language", "reward_model": "reward_model", "judge": "judge"}
MODEL_TERMS = ("reward_model", "judge")
WHOLE_RESPONSE_TERMS = ("math", "countdown", "format")
# what each term needs in Problem.extra (checked before scoring: a data error, not the model's)
EXTRA_KEYS = {"code": ("tests",), "countdown": ("numbers", "target")}

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RewardTerm:
    """One weighted reward. ``key`` defaults per name (math/code/countdown -> "accuracy");
    ``span`` is the part of the response it reads; ``model`` names the entry of the scorer's
    ``models`` a reward_model/judge term uses (default: its key)."""

    name: str
    weight: float = 1.0
    span: Literal["all", "think", "answer", "summary"] = "all"
    key: str = ""
    model: str = ""

    @property
    def out_key(self) -> str:
        return self.key or TERM_KEYS[self.name]

    @property
    def model_name(self) -> str:
        return self.model or self.out_key


def _terms(accuracy: str, format_weight: float = 0.1) -> list[RewardTerm]:
    return [RewardTerm(accuracy), RewardTerm("format", format_weight)]


def default_sources() -> dict[str, list[RewardTerm]]:
    """Task accuracy + format for the synthetic and math sets, code accuracy for HumanEval."""
    sources = {name: _terms("math") for name in ("arithmetic", "linear_equation", "gsm8k", "math500", "aime24", "amc23")}
    sources["countdown"] = _terms("countdown")
    sources["humaneval"] = [RewardTerm("code")]
    return sources


@dataclasses.dataclass
class RewardsConfig:
    """Rewards per data source plus the settings of each checker. ``language`` is the target
    language of the language-consistency term; ``batch_timeout_s`` bounds one ``score_batch``;
    ``workers`` = 0 means one verifier process / sandbox at a time per core."""

    sources: dict[str, list[RewardTerm]] = dataclasses.field(default_factory=default_sources)
    math: MathConfig = dataclasses.field(default_factory=MathConfig)
    code: CodeConfig = dataclasses.field(default_factory=CodeConfig)
    format: FormatConfig = dataclasses.field(default_factory=FormatConfig)
    countdown_exact_use: bool = False
    language: str = "en"
    batch_timeout_s: float = 120.0
    workers: int = 0
    # generative judges built from checkpoints by name, for "judge" terms (r1hpc.rewards.judge_model)
    judges: dict[str, JudgeModelConfig] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        for source, terms in self.sources.items():
            if not terms:
                raise ConfigError(f"sources.{source}: no reward terms")
            keys = set()
            for t in terms:
                if t.name not in TERM_KEYS:
                    raise ConfigError(f"sources.{source}: unknown reward {t.name!r}; known: {', '.join(TERM_KEYS)}")
                if t.name in WHOLE_RESPONSE_TERMS and t.span != "all":
                    raise ConfigError(f"sources.{source}: {t.name!r} finds its own answer in the whole response; "
                                      f"span must be 'all', got {t.span!r}")
                if t.out_key in keys or t.out_key == "total":
                    raise ConfigError(f"sources.{source}: key {t.out_key!r} used twice (or reserved); set 'key'")
                keys.add(t.out_key)
        if self.language not in LANGUAGES:
            raise ConfigError(f"language: unknown {self.language!r}; known: {', '.join(LANGUAGES)}")
        if self.batch_timeout_s <= 0 or self.workers < 0:
            raise ConfigError("batch_timeout_s must be positive and workers >= 0")
        self.math.validate()
        self.code.validate()
        self.format.validate()
        for judge in self.judges.values():
            judge.validate()


def _extra(problem: Problem, key: str):
    try:
        return problem.extra[key]
    except KeyError:
        raise ValueError(f"problem {problem.id!r} (data_source {problem.data_source!r}) lacks extra[{key!r}]") from None


class RewardScorer:
    """Scores a rollout batch; owns the verifier process pool (a context manager; ``close()``).

    ``models`` holds what model-based terms use: ``ScalarRewardModel`` or ``(prompts, responses)
    -> scores`` callables for "reward_model" terms, ``JudgeReward`` (or ``generate`` callables)
    for "judge" terms. ``timeouts`` counts checks that ran out of time and scored 0, ``errors``
    checks that raised on a response and scored 0 (nothing a response holds raises out of
    ``score_batch``).
    """

    def __init__(self, config: RewardsConfig | None = None, *,
                 models: dict[str, ScalarRewardModel | ScoreFn | JudgeReward | Callable[[str], str]] | None = None) -> None:
        self.config = config or RewardsConfig()
        self.config.validate()
        self.models = dict(models or {})
        for source, terms in self.config.sources.items():
            for t in terms:  # a configured judge is built by the job whose prompts need it (build_judges)
                if t.name in MODEL_TERMS and t.model_name not in self.models and t.model_name not in self.config.judges:
                    raise ConfigError(f"sources.{source}: term {t.name!r} needs models[{t.model_name!r}]")
        self.workers = self.config.workers or os.cpu_count() or 1
        self.pool = math_pool(self.workers)
        self.code_timeouts = 0
        self.errors = 0

    @property
    def timeouts(self) -> int:
        """Checks that hit a time limit (math worker killed, or the batch deadline) and scored 0."""
        return self.pool.timeouts + self.code_timeouts

    def state_dict(self) -> dict:
        """The cumulative counters (logged as ``reward/timeouts``), for exact resume."""
        return {"pool_timeouts": self.pool.timeouts, "code_timeouts": self.code_timeouts, "errors": self.errors}

    def load_state_dict(self, state: dict) -> None:
        self.pool.timeouts, self.code_timeouts = state["pool_timeouts"], state["code_timeouts"]
        self.errors = state.get("errors", 0)  # absent in checkpoints written before it was counted

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> "RewardScorer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def score_batch(self, responses: Sequence[str], problems: Sequence[Problem]) -> list[dict[str, float]]:
        """Per-sample ``{key: score, ..., "total": weighted sum}``; returns within about
        ``batch_timeout_s`` whatever the responses contain."""
        if len(responses) != len(problems):
            raise ValueError(f"{len(responses)} responses but {len(problems)} problems")
        deadline = time.monotonic() + self.config.batch_timeout_s
        plan = [self._terms_for(p) for p in problems]
        scores: list[dict[str, float]] = [{} for _ in responses]
        # Group by term name so the slow kinds run as one parallel batch each.
        jobs: dict[str, list[tuple[int, RewardTerm, str]]] = {}
        form = {"starts_in_think": self.config.format.starts_in_think, "style": self.config.format.style}
        for i, (r, terms) in enumerate(zip(responses, plan)):
            for t in terms:
                jobs.setdefault(t.name, []).append((i, t, select_span(r, t.span, **form)))
        for name, items in jobs.items():
            for (i, t, _), value in zip(items, self._run_safely(name, items, problems, deadline)):
                scores[i][t.out_key] = value
        for s, terms in zip(scores, plan):
            s["total"] = sum(t.weight * s[t.out_key] for t in terms)
        return scores

    def _terms_for(self, problem: Problem) -> list[RewardTerm]:
        try:
            terms = self.config.sources[problem.data_source]
        except KeyError:
            raise ValueError(f"problem {problem.id!r}: no rewards configured for data_source "
                             f"{problem.data_source!r}; configured: {', '.join(sorted(self.config.sources))}") from None
        for t in terms:
            if t.name in MODEL_TERMS and t.model_name not in self.models:
                raise ValueError(f"problem {problem.id!r} (data_source {problem.data_source!r}): term {t.name!r} needs "
                                 f"models[{t.model_name!r}], which this scorer was not given")
            for key in EXTRA_KEYS.get(t.name, ()):
                _extra(problem, key)
        return terms

    def _run_safely(self, name: str, items: list[tuple[int, RewardTerm, str]], problems: Sequence[Problem],
                    deadline: float) -> list[float]:
        """``_run``; if it raises, each response again on its own, a raising one scoring 0 (counted
        in ``errors``) so one response cannot fail the batch."""
        try:
            return self._run(name, items, problems, deadline)
        except Exception as e:
            log.warning("reward %r raised on a batch (%r); scoring its responses one by one", name, e)
        out = []
        for item in items:
            try:
                out.append(self._run(name, [item], problems, deadline)[0])
            except Exception as e:
                log.warning("reward %r raised on the response to problem %r, scored 0: %r", name, problems[item[0]].id, e)
                self.errors += 1
                out.append(0.0)
        return out

    def _run(self, name: str, items: list[tuple[int, RewardTerm, str]], problems: Sequence[Problem],
             deadline: float) -> list[float]:
        cfg = self.config
        if name == "math":
            return math_reward_batch([x for _, _, x in items], [problems[i].answer for i, _, _ in items],
                                     config=cfg.math, pool=self.pool, deadline=deadline)
        if name == "code":
            return self._code(items, problems, deadline)
        if name == "countdown":
            return [countdown_reward(x, _extra(problems[i], "numbers"), _extra(problems[i], "target"),
                                     exact_use=cfg.countdown_exact_use) for i, _, x in items]
        if name == "format":
            return [format_reward(x, partial=cfg.format.partial, starts_in_think=cfg.format.starts_in_think,
                                  style=cfg.format.style)
                    for _, _, x in items]
        if name == "language":
            return [language_share(x, cfg.language) for _, _, x in items]
        if name == "reward_model":
            return self._reward_model(items, problems)
        return self._judge(items, problems)

    def _code(self, items: list[tuple[int, RewardTerm, str]], problems: Sequence[Problem], deadline: float) -> list[float]:
        stats = CodeBatchStats()
        out = code_reward_batch([x for _, _, x in items], [problems[i].extra["tests"] for i, _, _ in items],
                                [problems[i].extra.get("entry_point") for i, _, _ in items], config=self.config.code,
                                workers=self.workers, deadline=deadline, stats=stats)
        self.code_timeouts += stats.timeouts
        self.errors += stats.errors
        return out

    def _reward_model(self, items: list[tuple[int, RewardTerm, str]], problems: Sequence[Problem]) -> list[float]:
        out: list[float] = [0.0] * len(items)
        by_model: dict[str, list[int]] = {}
        for j, (_, t, _) in enumerate(items):
            by_model.setdefault(t.model_name, []).append(j)
        for name, idx in by_model.items():
            fn = as_score_fn(self.models[name])
            values = fn([problems[items[j][0]].question for j in idx], [items[j][2] for j in idx])
            for j, v in zip(idx, values):
                out[j] = float(v)
        return out

    def _judge(self, items: list[tuple[int, RewardTerm, str]], problems: Sequence[Problem]) -> list[float]:
        out = []
        for i, t, x in items:
            judge = self.models[t.model_name]
            judge = judge if isinstance(judge, JudgeReward) else JudgeReward(judge)
            out.append(judge(problems[i].question, problems[i].answer, x))
        return out
