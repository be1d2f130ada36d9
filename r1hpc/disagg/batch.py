"""A rollout batch on disk: one order's problems, their G responses with per-token log-probs and
entropies (and, for routing replay, their MoE experts), the rewards, and the weight version that
sampled them.

Saved with ``torch.save`` and read with ``weights_only=True``: plain tensors, numbers and strings,
never pickled code, so a batch file cannot run anything in the trainer."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from r1hpc import faults
from r1hpc.data.problem import Problem
from r1hpc.rollout.generate import Sample


@dataclasses.dataclass
class RolloutBatch:
    order: str
    life: int
    step: int
    shard: int
    version: int
    worker: str
    problems: list[Problem]
    samples: list[Sample]
    scores: list[dict[str, float]]
    generate_s: float = 0.0
    score_s: float = 0.0


def save_batch(batch: RolloutBatch, path: Path, *, crash_midway: bool = False) -> None:
    """Write (and flush) ``batch`` to ``path``. ``crash_midway`` (fault injection, r1hpc.faults): the
    process SIGKILLs itself with half of the file written."""
    record: dict[str, Any] = {k: getattr(batch, k) for k in ("order", "life", "step", "shard", "version", "worker",
                                                              "scores", "generate_s", "score_s")}
    record["problems"] = [dataclasses.asdict(p) for p in batch.problems]
    record["samples"] = [{"prompt_ids": torch.tensor(s.prompt_ids, dtype=torch.int64),
                          "response_ids": torch.tensor(s.response_ids, dtype=torch.int64),
                          "logprobs": s.logprobs.float(), "entropies": s.entropies.float(),
                          "truncated": bool(s.truncated), "routing": s.routing} for s in batch.samples]
    with open(path, "wb") as f:
        torch.save(record, f)
        if crash_midway:
            faults.crash(half_written=f)
        f.flush()
        os.fsync(f.fileno())


def load_batch(path: Path) -> RolloutBatch:
    rec = torch.load(path, map_location="cpu", weights_only=True)
    samples = [Sample(prompt_ids=s["prompt_ids"].tolist(), response_ids=s["response_ids"].tolist(),
                      logprobs=s["logprobs"], entropies=s["entropies"], truncated=s["truncated"],
                      routing=s.get("routing"))
               for s in rec.pop("samples")]
    problems = [Problem(**p) for p in rec.pop("problems")]
    return RolloutBatch(problems=problems, samples=samples, **rec)
