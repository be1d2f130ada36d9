"""DeepSeek-R1's cold-start output form, ``|special_token|<reasoning_process>|special_token|<summary>``,
and a builder of cold-start SFT data from the synthetic tasks' clean worked solutions.

The tiny recipe's summary is ``<answer> X </answer>``: the math and Countdown rewards read the last
<answer> tag, so they score this form unchanged; the format reward checks it with
``rewards.format.style: cold_start``.
"""
from __future__ import annotations

import random
from pathlib import Path

from r1hpc.data.jsonl import write_jsonl
from r1hpc.data.mix import stream
from r1hpc.data.tasks import get_task

COLD_START_MARKER = "|special_token|"


def format_cold_start(reasoning: str, summary: str) -> str:
    """The cold-start form; it starts with a space because prompts end in "Assistant:"."""
    return f" {COLD_START_MARKER} {reasoning} {COLD_START_MARKER} {summary}"


def answer_summary(answer: str) -> str:
    """The tiny recipe's summary: the final answer in the tag the rule-based rewards read."""
    return f"<answer> {answer} </answer>"


def cold_start_records(cfg, n: int, seed: int | None = None) -> list[dict]:
    """``n`` SFT records ({question, response} + provenance: id, data_source, answer, extra (what the
    task's checker needs), source) from the mix's training split, each with its task's clean (never
    flawed) worked solution in the cold-start form."""
    seed = cfg.run.seed if seed is None else seed
    rng = random.Random(f"cold_start:{seed}")
    problems = stream(cfg.data.mix, "train", seed=seed)
    records = []
    for _ in range(n):
        p = next(problems)
        solution = get_task(p.data_source).solve(p, rng, False)
        records.append({"question": p.question, "response": format_cold_start(solution.reasoning, answer_summary(solution.answer)),
                        "id": p.id, "data_source": p.data_source, "answer": p.answer, "extra": p.extra, "source": "cold_start"})
    return records


def build_cold_start(cfg, n: int, out_path: str | Path, seed: int | None = None) -> Path:
    """Write ``n`` cold-start examples as SFT JSONL (r1hpc.data.sft_data) with a provenance file."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seed = cfg.run.seed if seed is None else seed
    return write_jsonl(out_path, cold_start_records(cfg, n, seed),
                       {"kind": "cold_start", "seed": seed, "tasks": list(cfg.data.mix.tasks),
                        "split": "train", "form": format_cold_start("<reasoning_process>", "<summary>").strip()})
