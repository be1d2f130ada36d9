"""Math accuracy: 1.0 when the response's final answer equals the gold answer, else 0.0.

Extraction and the plain-number fast path run in-process (linear, length-capped); everything that
needs sympy (LaTeX, intervals, sets, tuples, matrices, expressions) goes through math-verify in a
killable worker (``r1hpc.rewards.pool``) with a hard wall-clock limit.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Sequence

from r1hpc.config import ConfigError
from r1hpc.rewards.extract import FALLBACKS, extract_answer
from r1hpc.rewards.normalize import (answer_key, canonical, has_relation, numbers_equal, plain_number,
                                    qualified_number)
from r1hpc.rewards.pool import WorkerPool


@dataclasses.dataclass
class MathConfig:
    """Answer extraction and checking limits.

    ``fallbacks`` apply when there is neither a box nor an ``<answer>`` tag: "answer_is"
    ("the answer is X"), "gsm8k_hash" ("#### X"), "last_number". Only the last
    ``max_response_chars`` of a response are read (the answer is at the end); an extracted answer
    longer than ``max_answer_chars`` scores 0 without being parsed.
    """

    fallbacks: list[str] = dataclasses.field(default_factory=lambda: ["answer_is"])
    max_response_chars: int = 200_000
    max_answer_chars: int = 1_000
    timeout_s: float = 5.0

    def validate(self) -> None:
        bad = [f for f in self.fallbacks if f not in FALLBACKS]
        if bad:
            raise ConfigError(f"fallbacks: unknown {bad}; known: {list(FALLBACKS)}")
        if self.max_response_chars < 1 or self.max_answer_chars < 1:
            raise ConfigError("max_response_chars and max_answer_chars must be positive")
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout_s must be positive, got {self.timeout_s}")


def prepare(response: str, gold: str, cfg: MathConfig) -> float | tuple[str, str]:
    """A decided score, or the (gold, predicted) pair that needs the sympy worker."""
    ext = extract_answer(response[-cfg.max_response_chars :], cfg.fallbacks, cfg.max_answer_chars)
    pred = ext.answer
    if pred is None or len(pred) > cfg.max_answer_chars:
        return 0.0
    if len({answer_key(b, cfg.max_answer_chars) for b in ext.boxed}) > 1:
        return 0.0  # several different boxed answers: spraying earns nothing
    gold = gold.strip()
    if canonical(pred) == canonical(gold):
        return 1.0
    if has_relation(pred) and not has_relation(gold):
        return 0.0  # "6=5" is not 5 (math-verify would compare the last side)
    g, p = plain_number(gold), plain_number(pred)
    if g is not None and p is None and qualified_number(pred):
        return 0.0  # "5 and a half" is not 5
    if g is not None and p is not None:
        same = numbers_equal(g, p)
        if same is not None:
            return float(same)
    return gold, pred


def _boxed(answer: str) -> str:
    answer = answer.strip().strip("$")
    return answer if "\\boxed" in answer else "\\boxed{" + answer + "}"


def verify_pair(gold: str, pred: str) -> bool:
    """math-verify equivalence; runs inside a pool worker (its own timeouts are off: the pool kills)."""
    from math_verify import parse, verify

    g = parse(_boxed(gold), parsing_timeout=None)
    p = parse(_boxed(pred), parsing_timeout=None)
    return bool(g) and bool(p) and verify(g, p, timeout_seconds=None)


_default_pool: WorkerPool | None = None
_default_lock = threading.Lock()


def default_pool() -> WorkerPool:
    """The process-wide verifier pool used when no pool is passed (one worker per core)."""
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            _default_pool = math_pool()
        return _default_pool


def math_pool(workers: int | None = None) -> WorkerPool:
    """A pool whose workers have math-verify imported before they take a task."""
    return WorkerPool(workers, preload=("math_verify", "r1hpc.rewards.math"))


def math_reward_batch(
    responses: Sequence[str],
    golds: Sequence[str],
    *,
    timeout_s: float | None = None,
    config: MathConfig | None = None,
    pool: WorkerPool | None = None,
    deadline: float | None = None,
) -> list[float]:
    """Score many responses; the ones that need sympy run in parallel on the pool. A check past
    ``timeout_s`` (or the batch ``deadline``, a ``time.monotonic()`` value) scores 0.0 and is
    counted in ``pool.timeouts``."""
    if len(responses) != len(golds):
        raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
    cfg = config or MathConfig()
    scores: list[float] = []
    slow: list[tuple[int, tuple[str, str]]] = []
    for i, (r, g) in enumerate(zip(responses, golds)):
        decided = prepare(r, g, cfg)
        if isinstance(decided, tuple):
            slow.append((i, decided))
            decided = 0.0
        scores.append(decided)
    if slow:
        results = (pool or default_pool()).map(
            verify_pair, [pair for _, pair in slow], timeout_s=timeout_s or cfg.timeout_s, deadline=deadline
        )
        for (i, _), res in zip(slow, results):
            scores[i] = 1.0 if res.status == "ok" and res.value else 0.0
    return scores


def math_reward(response: str, gold: str, *, timeout_s: float = 5.0, config: MathConfig | None = None,
                pool: WorkerPool | None = None) -> float:
    """1.0 if the final answer of ``response`` equals ``gold``, else 0.0 (see ``math_reward_batch``)."""
    return math_reward_batch([response], [gold], timeout_s=timeout_s, config=config, pool=pool)[0]
