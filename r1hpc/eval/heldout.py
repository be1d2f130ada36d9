"""Held-out pass@1 of the current policy: k samples per problem, the share that is correct,
averaged per task and overall (R1's pass@1 protocol). Problems are sharded over data-parallel
ranks and the counts summed."""
from __future__ import annotations

import dataclasses
from typing import Callable, Literal, Sequence

import torch

from r1hpc.config import ConfigError
from r1hpc.data.problem import Problem
from r1hpc.device import collective_device
from r1hpc.rollout.engines import generate_with
from r1hpc.rollout.generate import check_engine, response_text


@dataclasses.dataclass
class EvalConfig:
    """R1 evaluates with temperature 0.6 and top-p 0.95, k samples per problem."""

    num_problems: int = 200
    samples_per_problem: int = 4
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 160
    seed: int = 0
    # the decoder (r1hpc.rollout.engines), as rollout.engine; with the compiled sampler both draw
    # the same samples, so it changes the time an evaluation takes, not its figures
    engine: Literal["static", "dynamic"] = "static"
    # `r1hpc evaluate` (r1hpc.eval.benchmarks): sets by name (gsm8k, math500, aime24, amc23, a synthetic
    # task, a .jsonl path); empty = the run's own prompt sources
    sets: list[str] = dataclasses.field(default_factory=list)

    def validate(self) -> None:
        if self.num_problems < 1 or self.samples_per_problem < 1:
            raise ConfigError("num_problems and samples_per_problem must be >= 1")
        check_engine(self.engine)
        from r1hpc.eval.benchmarks import check_set_name

        for name in self.sets:
            check_set_name(name)


def evaluate_pass_at_1(model, tok, problems: Sequence[Problem], render: Callable[[str], str], scorer,
                       cfg: EvalConfig, max_seq_length: int) -> dict[str, float]:
    """{"pass@1": overall, "pass@1/<task>": per task, "format": share well-formed}."""
    from megatron.core import parallel_state

    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    mine = list(problems)[dp_rank::dp]
    k = cfg.samples_per_problem
    prompts = [tok.encode(render(p.question)) for p in mine for _ in range(k)]
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + dp_rank)
    samples = generate_with(cfg.engine, model, prompts, vocab_size=tok.vocab_size, stop_ids=tok.stop_token_ids,
                            temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                            max_seq_length=max_seq_length, generator=gen) if prompts else []
    scores = scorer.score_batch([response_text(tok, s) for s in samples], [p for p in mine for _ in range(k)])
    sources = sorted({p.data_source for p in problems})
    # per source: [correct, total, well-formed]
    group = parallel_state.get_data_parallel_group()
    counts = torch.zeros(len(sources), 3, dtype=torch.float64, device=collective_device(group))
    for i, s in enumerate(scores):
        row = sources.index(mine[i // k].data_source)
        counts[row] += torch.tensor([s.get("accuracy", 0.0), 1.0, s.get("format", 0.0)], dtype=torch.float64,
                                    device=counts.device)
    if dp > 1:
        torch.distributed.all_reduce(counts, group=group)
    out = {"pass@1": float(counts[:, 0].sum() / counts[:, 1].sum().clamp(min=1)),
           "format": float(counts[:, 2].sum() / counts[:, 1].sum().clamp(min=1))}
    for name, (c, n, _) in zip(sources, counts.tolist()):
        out[f"pass@1/{name}"] = c / max(n, 1.0)
    return out
