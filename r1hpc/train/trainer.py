"""``r1hpc train``: one GRPO run, owned by a ``Trainer`` (torchtitan's shape). R1-Zero is a recipe
of it (configs/tiny_r1zero.yaml: GRPO straight from a base), not a different code path.

The constructor checks the config and joins the process group; ``run`` chooses how to start (fresh,
or from the newest usable checkpoint), pretrains or reuses the base (or starts from a converted
pretrained checkpoint), builds the policy and reference, scorer, logger and checkpointing, evaluates
held-out pass@1, runs the step loop with its hooks (evaluation, preemption, time limit, save),
evaluates again and writes the run directory (resolved config, metrics.jsonl, TensorBoard,
curves.png, summary.json). docs/architecture.md follows one step from the CLI to the optimizer.
"""
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
from r1hpc.model.base import start_weights
from r1hpc.model.mcore_compat import version_record
from r1hpc.monitor.metrics import MetricsLogger, truncate_metrics
from r1hpc.monitor.monitor import Monitor
from r1hpc.monitor.plots import plot_training
from r1hpc.rewards.judge_model import build_judges
from r1hpc.rewards.registry import RewardScorer
from r1hpc.train.grpo import GRPOTrainer
from r1hpc.train.policy import load_policy
from r1hpc.train.pretrain import ensure_base


def check_config(cfg) -> None:
    """What would otherwise fail only after pretraining, or silently train something else."""
    if cfg.model.hf_path:  # never silently train the synthetic base instead of the HF model asked for
        raise ConfigError("model.hf_path: `r1hpc train` starts from a converted checkpoint, not an HF folder: "
                          "run `r1hpc convert hf-to-megatron <folder or .gguf> <dir>` and set pretrain.base_dir "
                          "to <dir> (docs/hf_weights.md)")
    if cfg.rollout.group_size < 2:
        raise ConfigError(f"rollout.group_size: GRPO compares samples within a group and needs >= 2, got "
                          f"{cfg.rollout.group_size}")


class Trainer:
    """One run of ``r1hpc train``: ``Trainer(cfg).run()`` returns the summary."""

    def __init__(self, cfg) -> None:
        check_config(cfg)
        self.cfg = cfg
        self.run_dir = Path(cfg.run.output_dir) / cfg.run.name
        self.ckpt_dir = Path(cfg.checkpoint.directory) if cfg.checkpoint.directory else self.run_dir / "checkpoints"
        if cfg.checkpoint.resume == "none":
            check_fresh_start(self.ckpt_dir, cfg.checkpoint.overwrite)
        self.env = init_distributed(cfg.parallel, cfg.model, seed=cfg.run.seed)
        self.rank0 = self.env.rank == 0
        self.say = print if self.rank0 else (lambda *a, **k: None)
        self.evals: list[dict] = []
        self.guard = self.scorer = self.logger = self.source = None

    def run(self) -> dict:
        candidates = resume_candidates(self.cfg.checkpoint.resume, self.ckpt_dir, self.say)
        resumed = self._check_resume(candidates[0]) if candidates else None
        if resumed is not None and resumed["finished"] and resumed["step"] >= self.cfg.grpo.steps:
            self.say(f"[resume] the run already finished: {candidates[0]} holds its final step {resumed['step']} "
                     f"of {self.cfg.grpo.steps}; nothing to do")
            destroy_distributed()
            return {"already_finished": True, "grpo_steps": resumed["step"]}
        self._open_run_dir(fresh=resumed is None)
        t_start = time.perf_counter()
        self.guard = PreemptionGuard()  # from here a SIGUSR2/SIGTERM only asks for a checkpoint at the next step
        try:
            base_meta = self._build(resumed)
            start_step = self._start(candidates, resumed)
            steps_done, grpo_s = self._train(start_step)
            self._finish(steps_done)
        finally:
            self._close()
        summary = self._summary(base_meta, start_step, steps_done, grpo_s, time.perf_counter() - t_start)
        destroy_distributed()
        return summary

    # ------------------------------------------------------------------ before the loop
    def _check_resume(self, path: Path) -> dict:
        resumed = read_meta(path)
        check_resumable(resumed, to_dict(self.cfg), current_layout(), str(path))
        if note := version_change(resumed, version_record()):
            self.say(note)
        return resumed

    def _open_run_dir(self, fresh: bool) -> None:
        torch.distributed.barrier()  # every rank decided before rank 0 touches the directory
        if self.rank0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            dump_yaml(self.cfg, self.run_dir / "config.yaml")
            if fresh:
                (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)

    def _build(self, resumed: Optional[dict]) -> dict:
        """Base, policy and reference, scorer, logger, the GRPO trainer and checkpointing; returns the base's meta."""
        cfg, say = self.cfg, self.say
        base_dir, base_meta = ensure_base(cfg, log=say)
        init = start_weights(cfg, base_dir)
        say(f"[policy] starting from {init}")
        self.policy, self.tok, self.model_cfg = load_policy(cfg, init, trainable=True, base_dir=base_dir)
        reference = None
        if cfg.algo.beta > 0:  # the frozen reference is the policy the stage starts from
            reference, _, _ = load_policy(cfg, init, trainable=False, base_dir=base_dir)
        self.render = partial(render_prompt, cfg=cfg.data.template, chat_template=self.tok.chat_template)
        self.heldout = heldout_problems(cfg.data, cfg.eval.num_problems)
        self.scorer = RewardScorer(cfg.rewards, models=build_judges(cfg, run_data_sources(cfg.data)))
        self.logger = MetricsLogger(self.run_dir, enabled=self.rank0,
                                    purge_step=resumed["step"] + 1 if resumed else None)
        seed = cfg.run.seed if cfg.grpo.seed is None else cfg.grpo.seed
        self.problems = training_problems(cfg.data, seed)
        if cfg.disagg.enabled:
            self.source = ExchangeSource(cfg.disagg, exchange_root(cfg), policy_module=self.policy.module,
                                         make_stream=partial(training_stream, cfg.data, seed=seed),
                                         prompts_per_step=cfg.rollout.prompts_per_step,
                                         group_size=cfg.rollout.group_size, seed=seed, say=say)
        monitor = Monitor(cfg.monitor, self.tok, self.policy.module, self.run_dir, writer=self.rank0, say=say) \
            if cfg.monitor.enabled else None
        self.grpo = GRPOTrainer(self.policy, reference, tokenizer=self.tok, scorer=self.scorer, algo=cfg.algo,
                                rollout=cfg.rollout, grpo=cfg.grpo, render=self.render, problems=self.problems,
                                seed=seed, source=self.source, monitor=monitor, routing=cfg.routing)
        self.ckpt = CheckpointManager(cfg.checkpoint, self.ckpt_dir, policy=self.policy, trainer=self.grpo,
                                      scorer=self.scorer, config=to_dict(cfg),
                                      tokenizer_path=base_dir / "tokenizer.json")
        return base_meta

    def _start(self, candidates: list[Path], resumed: Optional[dict]) -> int:
        """The step the loop starts after: a checkpoint's, or 0 after the step-0 evaluation."""
        if resumed is None:  # only now that the run could start: a failed start deletes nothing
            clear_stale(self.ckpt_dir, self.rank0, self.say)
            torch.distributed.barrier()
            self.evaluate(0)
            start = 0
        else:
            loaded, resumed = self.ckpt.load_first(candidates, self.say, move_aside=self.cfg.checkpoint.resume == "auto")
            if loaded != candidates[0]:
                check_resumable(resumed, to_dict(self.cfg), current_layout(), str(loaded))
            if self.rank0:  # only after a successful load: a failed resume loses nothing
                truncate_metrics(self.logger.path, resumed["metrics_bytes"])
            self.evals.extend(resumed["evals"])
            start = resumed["step"]
            self.say(f"[resume] continuing from step {start} ({loaded})")
        if self.source is not None:
            self.source.start(self.grpo.step, self.problems.drawn)
            self.say(f"[disagg] exchange {self.source.ex.root}: life {self.source.life}, weights v{self.grpo.step} "
                     f"published; waiting for rollout workers")
        return start

    # ------------------------------------------------------------------ the loop and its hooks
    def evaluate(self, step: int) -> dict:
        """Held-out pass@1 of the policy now; kept for the summary and the checkpoint."""
        t = time.perf_counter()
        result = evaluate_pass_at_1(self.policy.module, self.tok, self.heldout, self.render, self.scorer,
                                    self.cfg.eval, self.model_cfg.max_seq_length)
        result["step"] = step
        result["eval_s"] = time.perf_counter() - t
        self.evals.append(result)
        self.say("[eval] step %d: " % step + ", ".join(f"{k} {v:.3f}" for k, v in result.items()
                                                      if k.startswith("pass@1") or k == "format"))
        return result

    def save(self, step: int, finished: bool = False) -> None:
        path = self.ckpt.save(step, evals=self.evals, metrics_path=self.logger.path, finished=finished)
        self.say(f"[checkpoint] saved {path}")

    def _train(self, start_step: int) -> tuple[int, float]:
        """Steps ``start_step + 1 ..`` until grpo.steps or the time limit; returns (last step, GRPO seconds).
        A preemption signal saves and exits with EXIT_CODE_REQUEUE."""
        cfg = self.cfg.grpo
        t_grpo, evals_before = time.perf_counter(), len(self.evals)

        def grpo_seconds() -> float:
            """This process's training time: held-out evaluations in between do not count."""
            return time.perf_counter() - t_grpo - sum(e["eval_s"] for e in self.evals[evals_before:])

        progress = _progress(cfg.steps, cfg.time_limit_minutes, self.rank0)
        progress.update(start_step)
        steps_done = start_step
        for step in range(start_step + 1, cfg.steps + 1):
            metrics = self.grpo.train_step()
            self.logger.log(step, metrics)
            steps_done = step
            _show(progress, metrics, grpo_seconds(), cfg.time_limit_minutes)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                self.logger.log(step, {f"eval/{k}": v for k, v in self.evaluate(step).items() if k != "step"})
            if self.guard.should_stop():
                self.save(step)
                progress.close()
                self.say(f"[preempt] saved step {step}; exiting for requeue")
                sys.exit(EXIT_CODE_REQUEUE)
            if cfg.time_limit_minutes is not None and _agreed_stop(grpo_seconds() > 60 * cfg.time_limit_minutes):
                self.say(f"[grpo] time limit of {cfg.time_limit_minutes} min reached after {step} steps")
                break
            if self.cfg.checkpoint.save_every and step % self.cfg.checkpoint.save_every == 0 and step < cfg.steps:
                self.save(step)
        progress.close()
        return steps_done, grpo_seconds()

    def _finish(self, steps_done: int) -> None:
        after = self.evaluate(steps_done)
        self.logger.log(steps_done, {f"eval/{k}": v for k, v in after.items() if k != "step"})
        self.save(steps_done, finished=steps_done >= self.cfg.grpo.steps)
        if self.source is not None:
            self.source.finish(steps_done)

    def _close(self) -> None:
        if self.source is not None:
            self.source.close()
        self.guard.uninstall()
        for part in (self.scorer, self.logger):
            if part is not None:
                part.close()

    def _summary(self, base_meta: dict, start_step: int, steps_done: int, grpo_s: float, total_s: float) -> dict:
        before, after = self.evals[0], self.evals[-1]
        summary = {
            "pass_at_1_before": before["pass@1"], "pass_at_1_after": after["pass@1"],
            "per_task_before": {k: v for k, v in before.items() if k.startswith("pass@1/")},
            "per_task_after": {k: v for k, v in after.items() if k.startswith("pass@1/")},
            "format_before": before["format"], "format_after": after["format"],
            "grpo_steps": steps_done, "grpo_wall_s": grpo_s,
            "grpo_steps_per_min": 60 * (steps_done - start_step) / max(grpo_s, 1e-9),  # steps this process ran
            "pretrain_wall_s": base_meta.get("wall_s"), "base_params": base_meta.get("params"),
            "total_wall_s": total_s, "world_size": self.env.world_size,
            "tensor_model_parallel_size": self.cfg.parallel.tensor_model_parallel_size, "evals": self.evals,
        }
        if self.rank0:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            plot_training(self.run_dir / "metrics.jsonl", self.run_dir / "curves.png", self.evals)
            self.say(f"\n[summary] held-out pass@1 {before['pass@1']:.3f} -> {after['pass@1']:.3f} after {steps_done} "
                     f"GRPO steps in {grpo_s / 60:.1f} min ({summary['grpo_steps_per_min']:.1f} steps/min); "
                     f"run dir {self.run_dir}")
            for k in sorted(summary["per_task_after"]):
                self.say(f"          {k}: {summary['per_task_before'].get(k, 0):.3f} -> "
                         f"{summary['per_task_after'][k]:.3f}")
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


def _show(progress, metrics: dict, grpo_s: float, limit_minutes: Optional[float]) -> None:
    budget = {} if limit_minutes is None else {"time": f"{grpo_s / 60:.1f}/{limit_minutes:g}min"}  # the limit ends it first
    progress.set_postfix(reward=f"{metrics['reward/mean']:.3f}", acc=f"{metrics.get('reward/accuracy', 0):.3f}",
                         len=f"{metrics.get('response_length/mean', 0):.0f}", **budget)
    progress.update(1)
