"""Sharded rollout and evaluation: a Slurm job array splits the problems, each task writes one
JSON file, and ``merge`` joins them into the same result one process would give.

Equality with one process is by construction: every problem is generated alone, with a generator
seeded from (seed, problem index), so neither the shard it falls in nor its neighbours in a batch
change its samples. ``r1hpc eval|rollout <cfg> --shard i/n --out DIR`` and ``r1hpc merge DIR``.
"""
from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path
from typing import Literal, Optional

from r1hpc.eval.shard_io import MERGED, shard_path, write_json_atomic

Kind = Literal["eval", "rollout"]


def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 3/8), got {spec!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {spec}: need 0 <= i < n")
    return i, n


def _problems(cfg, kind: Kind):
    from r1hpc.data.mix import heldout_set, train_problems

    if kind == "eval":
        return heldout_set(cfg.data.mix, cfg.eval.num_problems)
    return train_problems(cfg.data.mix, cfg.eval.num_problems)


def _sampling(cfg, kind: Kind) -> dict:
    if kind == "eval":
        e = cfg.eval
        return dict(k=e.samples_per_problem, temperature=e.temperature, top_p=e.top_p, top_k=0,
                    max_new_tokens=e.max_new_tokens, engine=e.engine)
    r = cfg.rollout
    return dict(k=r.group_size, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                max_new_tokens=r.max_new_tokens, engine=r.engine)


def run_shard(cfg, kind: Kind, shard: tuple[int, int], out_dir: str | Path,
              weights: Optional[str | Path] = None) -> Path:
    """Generate and score problems ``i, i+n, ...`` (``cfg.eval.num_problems`` of them in all: the
    held-out set for eval, the first training problems for rollout) and write this shard's file."""
    import torch

    from r1hpc.checkpoint.layout import model_weights_dir
    from r1hpc.data.templates import render_prompt
    from r1hpc.distributed import destroy_distributed, init_distributed
    from r1hpc.model.base import base_dir_of
    from r1hpc.rewards.judge_model import build_judges
    from r1hpc.rewards.registry import RewardScorer
    from r1hpc.rollout.engines import generate_with
    from r1hpc.rollout.generate import response_text
    from r1hpc.train.policy import load_policy

    i, n = shard
    env = init_distributed(cfg.parallel, cfg.model, seed=cfg.run.seed)
    if env.world_size != 1:
        raise RuntimeError(f"a shard runs as one process (got world size {env.world_size}); "
                           "scale out with more array tasks")
    base_dir = base_dir_of(cfg)
    if not (base_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{base_dir}: no tokenizer.json (train the base first, or set pretrain.base_dir)")
    weights = model_weights_dir(weights) if weights else base_dir / "weights"
    engine, tok, model_cfg = load_policy(cfg, weights, trainable=False, base_dir=base_dir)
    render = partial(render_prompt, cfg=cfg.data.template, chat_template=tok.chat_template)
    s = _sampling(cfg, kind)
    problems = _problems(cfg, kind)
    scorer = RewardScorer(cfg.rewards, models=build_judges(cfg, {p.data_source for p in problems}))
    records = []
    try:
        for index in range(i, len(problems), n):
            p = problems[index]
            prompt = tok.encode(render(p.question))
            gen = torch.Generator().manual_seed(cfg.eval.seed * 1_000_003 + index)
            samples = generate_with(s["engine"], engine.module, [prompt] * s["k"], vocab_size=tok.vocab_size,
                                    stop_ids=tok.stop_token_ids, temperature=s["temperature"], top_p=s["top_p"],
                                    top_k=s["top_k"], max_new_tokens=s["max_new_tokens"],
                                    max_seq_length=model_cfg.max_seq_length, generator=gen)
            texts = [response_text(tok, x) for x in samples]
            records.append({"index": index, "id": p.id, "data_source": p.data_source, "question": p.question,
                            "answer": p.answer, "responses": texts,
                            "scores": scorer.score_batch(texts, [p] * len(texts))})
    finally:
        scorer.close()
        destroy_distributed()
    out = shard_path(Path(out_dir), i, n)
    write_json_atomic(out, {"kind": kind, "shard": [i, n], "num_problems": len(problems),
                             "weights": str(weights), "model": dataclasses.asdict(model_cfg),
                             "example_prompt": render(problems[i].question) if i < len(problems) else None,
                             "records": records})
    return out


def merge(out_dir: str | Path) -> dict:
    """Join every shard file in ``out_dir`` into ``merged.json`` (records in problem order, and for
    eval pass@1 overall and per task), or for ``r1hpc evaluate`` shards into its results files.
    Missing or inconsistent shards are named in the error."""
    out_dir = Path(out_dir)
    files = sorted(out_dir.glob("shard-*-of-*.json"))
    if not files:
        raise FileNotFoundError(f"{out_dir}: no shard-*-of-*.json files to merge")
    shards = [json.loads(f.read_text()) for f in files]
    counts = {s["shard"][1] for s in shards}
    kinds = {s["kind"] for s in shards}
    if len(counts) != 1 or len(kinds) != 1:
        raise ValueError(f"{out_dir}: shards from different runs (shard counts {sorted(counts)}, kinds {sorted(kinds)})")
    n = counts.pop()
    missing = sorted(set(range(n)) - {s["shard"][0] for s in shards})
    if missing:
        raise FileNotFoundError(f"{out_dir}: shards {missing} of {n} are missing (failed or still running array tasks)")
    records = sorted((r for s in shards for r in s["records"]), key=lambda r: r["index"])
    kind = kinds.pop()
    if kind == "evaluate":
        from r1hpc.eval.benchmarks import merge_shards

        return merge_shards(out_dir, shards)
    result = {"kind": kind, "shards": n, "num_problems": shards[0]["num_problems"],
              "weights": shards[0]["weights"], "records": records}
    if result["kind"] == "eval":
        result["metrics"] = pass_at_1(records)
    write_json_atomic(out_dir / MERGED, result)
    return result


def pass_at_1(records: list[dict]) -> dict[str, float]:
    """R1's pass@1 (the share of correct samples, per problem averaged over samples), overall and per
    task, and the share of well-formed responses; the same keys as ``evaluate_pass_at_1``."""
    sums: dict[str, list[float]] = {}
    for r in records:
        acc = sums.setdefault(r["data_source"], [0.0, 0.0, 0.0])
        for s in r["scores"]:
            acc[0] += s.get("accuracy", 0.0)
            acc[1] += 1
            acc[2] += s.get("format", 0.0)
    total = [sum(v[j] for v in sums.values()) for j in range(3)]
    out = {"pass@1": total[0] / max(total[1], 1), "format": total[2] / max(total[1], 1)}
    out.update({f"pass@1/{k}": v[0] / max(v[1], 1) for k, v in sorted(sums.items())})
    return out
