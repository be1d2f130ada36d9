"""The R1-Zero job: pretrain (or reuse) a weak base, or start from a converted pretrained checkpoint;
evaluate held-out pass@1, run GRPO straight from the base with rule-based rewards, evaluate again,
and write the run directory (resolved config, metrics.jsonl, TensorBoard, curves.png, summary.json)."""
from __future__ import annotations

import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Optional

import torch

from r1hpc.checkpoint.compat import check_resumable, current_layout, version_change
from r1hpc.checkpoint.layout import read_meta
from r1hpc.checkpoint.manager import CheckpointManager
from r1hpc.checkpoint.preemption import EXIT_CODE_REQUEUE, PreemptionGuard
from r1hpc.checkpoint.resume import check_fresh_start, clear_stale, resume_candidates
from r1hpc.config import ConfigError, dump_yaml, to_dict
from r1hpc.data.prompts import heldout_problems, run_data_sources, training_problems, training_stream
from r1hpc.data.templates import render_prompt
from r1hpc.device import collective_device
from r1hpc.disagg.config import exchange_root
from r1hpc.disagg.source import ExchangeSource
from r1hpc.distributed import destroy_distributed, init_distributed
from r1hpc.eval.heldout import evaluate_pass_at_1
from r1hpc.model.mcore_compat import version_record
from r1hpc.monitor.metrics import MetricsLogger, truncate_metrics
from r1hpc.monitor.monitor import Monitor
from r1hpc.monitor.plots import plot_training
from r1hpc.rewards.judge_model import build_judges
from r1hpc.rewards.registry import RewardScorer
from r1hpc.train.grpo import GRPOTrainer
from r1hpc.train.policy import load_policy
from r1hpc.train.pretrain import ensure_base, start_weights


def run_r1zero(cfg) -> dict:
    if cfg.model.hf_path:  # never silently train the synthetic base instead of the HF model asked for
        raise ConfigError("model.hf_path: the R1-Zero job starts from a converted checkpoint, not an HF folder: "
                          "run `r1hpc convert hf-to-megatron <folder or .gguf> <dir>` and set pretrain.base_dir "
                          "to <dir> (docs/hf_weights.md)")
    if cfg.rollout.group_size < 2:  # else it fails only after pretraining
        raise ConfigError(f"rollout.group_size: GRPO compares samples within a group and needs >= 2, got "
                          f"{cfg.rollout.group_size}")
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    ckpt_dir = Path(cfg.checkpoint.directory) if cfg.checkpoint.directory else run_dir / "checkpoints"
    if cfg.checkpoint.resume == "none":
        check_fresh_start(ckpt_dir, cfg.checkpoint.overwrite)
    env = init_distributed(cfg.parallel, cfg.model, seed=cfg.run.seed)
    rank0 = env.rank == 0
    say = print if rank0 else (lambda *a, **k: None)
    candidates = resume_candidates(cfg.checkpoint.resume, ckpt_dir, say)
    resume_from = candidates[0] if candidates else None
    resumed = None
    if resume_from is not None:
        resumed = read_meta(resume_from)
        check_resumable(resumed, to_dict(cfg), current_layout(), str(resume_from))
        if note := version_change(resumed, version_record()):
            say(note)
        if resumed["finished"] and resumed["step"] >= cfg.grpo.steps:
            say(f"[resume] the run already finished: {resume_from} holds its final step {resumed['step']} "
                f"of {cfg.grpo.steps}; nothing to do")
            destroy_distributed()
            return {"already_finished": True, "grpo_steps": resumed["step"]}
    torch.distributed.barrier()  # every rank decided before rank 0 touches the directory
    if rank0:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, run_dir / "config.yaml")
        if resumed is None:
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    t_start = time.perf_counter()
    guard = PreemptionGuard()  # from here a SIGUSR2/SIGTERM only asks for a checkpoint at the next step

    base_dir, base_meta = ensure_base(cfg, log=say)
    init = start_weights(cfg, base_dir)
    say(f"[policy] starting from {init}")
    policy, tok, model_cfg = load_policy(cfg, init, trainable=True, base_dir=base_dir)
    reference = None
    if cfg.algo.beta > 0:  # the frozen reference is the policy the stage starts from
        reference, _, _ = load_policy(cfg, init, trainable=False, base_dir=base_dir)

    render = partial(render_prompt, cfg=cfg.data.template, chat_template=tok.chat_template)
    heldout = heldout_problems(cfg.data, cfg.eval.num_problems)
    scorer = RewardScorer(cfg.rewards, models=build_judges(cfg, run_data_sources(cfg.data)))
    logger = MetricsLogger(run_dir, enabled=rank0, purge_step=resumed["step"] + 1 if resumed else None)
    evals = []

    def evaluate(step: int) -> dict:
        t = time.perf_counter()
        result = evaluate_pass_at_1(policy.module, tok, heldout, render, scorer, cfg.eval, model_cfg.max_seq_length)
        result["step"] = step
        result["eval_s"] = time.perf_counter() - t
        evals.append(result)
        say("[eval] step %d: " % step + ", ".join(f"{k} {v:.3f}" for k, v in result.items()
                                                 if k.startswith("pass@1") or k == "format"))
        return result

    source = None
    try:
        problems = training_problems(cfg.data, cfg.run.seed)
        if cfg.disagg.enabled:
            source = ExchangeSource(cfg.disagg, exchange_root(cfg), policy_module=policy.module,
                                    make_stream=partial(training_stream, cfg.data, seed=cfg.run.seed), prompts_per_step=cfg.rollout.prompts_per_step,
                                    group_size=cfg.rollout.group_size, seed=cfg.run.seed, say=say)
        trainer = GRPOTrainer(policy, reference, tokenizer=tok, scorer=scorer, algo=cfg.algo, rollout=cfg.rollout,
                              grpo=cfg.grpo, render=render, problems=problems, seed=cfg.run.seed, source=source,
                              routing=cfg.routing,
                              monitor=Monitor(cfg.monitor, tok, policy.module, run_dir, writer=rank0, say=say)
                              if cfg.monitor.enabled else None)
        ckpt = CheckpointManager(cfg.checkpoint, ckpt_dir, policy=policy, trainer=trainer, scorer=scorer,
                                 config=to_dict(cfg), tokenizer_path=base_dir / "tokenizer.json")

        if resume_from is None:  # only now that the run could start: a failed start deletes nothing
            clear_stale(ckpt_dir, rank0, say)
            torch.distributed.barrier()

        def save(step: int, finished: bool = False) -> None:
            path = ckpt.save(step, evals=evals, metrics_path=logger.path, finished=finished)
            say(f"[checkpoint] saved {path}")

        start_step = steps_done = 0
        if resumed is not None:
            loaded, resumed = ckpt.load_first(candidates, say, move_aside=cfg.checkpoint.resume == "auto")
            if loaded != resume_from:
                check_resumable(resumed, to_dict(cfg), current_layout(), str(loaded))
                resume_from = loaded
            if rank0:  # only after a successful load: a failed resume loses nothing
                truncate_metrics(logger.path, resumed["metrics_bytes"])
            evals.extend(resumed["evals"])
            start_step = steps_done = resumed["step"]
            say(f"[resume] continuing from step {steps_done} ({resume_from})")
        else:
            evaluate(0)
        if source is not None:
            source.start(trainer.step, problems.drawn)
            say(f"[disagg] exchange {source.ex.root}: life {source.life}, weights v{trainer.step} published; "
                f"waiting for rollout workers")
        before = evals[0]
        t_grpo, evals_before = time.perf_counter(), len(evals)

        def _grpo_seconds() -> float:
            """This process's training time: held-out evaluations in between do not count."""
            return time.perf_counter() - t_grpo - sum(e["eval_s"] for e in evals[evals_before:])

        progress = _progress(cfg.grpo.steps, cfg.grpo.time_limit_minutes, rank0)
        progress.update(steps_done)
        for step in range(steps_done + 1, cfg.grpo.steps + 1):
            metrics = trainer.train_step()
            logger.log(step, metrics)
            steps_done = step
            budget = {} if cfg.grpo.time_limit_minutes is None else \
                {"time": f"{_grpo_seconds() / 60:.1f}/{cfg.grpo.time_limit_minutes:g}min"}  # the limit ends it first
            progress.set_postfix(reward=f"{metrics['reward/mean']:.3f}", acc=f"{metrics.get('reward/accuracy', 0):.3f}",
                                 len=f"{metrics.get('response_length/mean', 0):.0f}", **budget)
            progress.update(1)
            if cfg.grpo.eval_every and step % cfg.grpo.eval_every == 0 and step < cfg.grpo.steps:
                logger.log(step, {f"eval/{k}": v for k, v in evaluate(step).items() if k != "step"})
            if guard.should_stop():
                save(step)
                progress.close()
                say(f"[preempt] saved step {step}; exiting for requeue")
                sys.exit(EXIT_CODE_REQUEUE)
            limit = cfg.grpo.time_limit_minutes
            if limit is not None and _agreed_stop(_grpo_seconds() > 60 * limit):
                say(f"[grpo] time limit of {limit} min reached after {step} steps")
                break
            if cfg.checkpoint.save_every and step % cfg.checkpoint.save_every == 0 and step < cfg.grpo.steps:
                save(step)
        progress.close()
        grpo_s = _grpo_seconds()
        after = evaluate(steps_done)
        logger.log(steps_done, {f"eval/{k}": v for k, v in after.items() if k != "step"})
        save(steps_done, finished=steps_done >= cfg.grpo.steps)
        if source is not None:
            source.finish(steps_done)
    finally:
        if source is not None:
            source.close()
        guard.uninstall()
        scorer.close()
        logger.close()
    summary = {
        "pass_at_1_before": before["pass@1"], "pass_at_1_after": after["pass@1"],
        "per_task_before": {k: v for k, v in before.items() if k.startswith("pass@1/")},
        "per_task_after": {k: v for k, v in after.items() if k.startswith("pass@1/")},
        "format_before": before["format"], "format_after": after["format"],
        "grpo_steps": steps_done, "grpo_wall_s": grpo_s,
        "grpo_steps_per_min": 60 * (steps_done - start_step) / max(grpo_s, 1e-9),  # steps this process ran
        "pretrain_wall_s": base_meta.get("wall_s"), "base_params": base_meta.get("params"),
        "total_wall_s": time.perf_counter() - t_start, "world_size": env.world_size,
        "tensor_model_parallel_size": cfg.parallel.tensor_model_parallel_size, "evals": evals,
    }
    if rank0:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        plot_training(run_dir / "metrics.jsonl", run_dir / "curves.png", evals)
        say(f"\n[summary] held-out pass@1 {before['pass@1']:.3f} -> {after['pass@1']:.3f} after {steps_done} GRPO "
            f"steps in {grpo_s / 60:.1f} min ({summary['grpo_steps_per_min']:.1f} steps/min); run dir {run_dir}")
        for k in sorted(summary["per_task_after"]):
            say(f"          {k}: {summary['per_task_before'].get(k, 0):.3f} -> {summary['per_task_after'][k]:.3f}")
    destroy_distributed()
    return summary


def _agreed_stop(local: bool) -> bool:
    """All ranks stop at the same step (ranks' clocks differ)."""
    flag = torch.tensor(float(local), device=collective_device())
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag)


def _progress(total: int, limit_minutes: Optional[float], enabled: bool):
    """Steps out of ``grpo.steps``; with a time limit the bar says so, since the limit usually ends the run first."""
    from tqdm import tqdm

    desc = "GRPO" if limit_minutes is None else f"GRPO (stops at {limit_minutes:g} min)"
    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True)
