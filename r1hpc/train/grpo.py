"""The GRPO step on megatron-core, colocated: every rank holds its policy shard, rolls out, scores
through the reward pool, and updates.

One step, each part a named method of ``GRPOTrainer``: sample prompts (sharded over data-parallel
ranks), roll out G responses each with the KV-cached sampler and score them in reward worker
processes (``rollout_and_score``; in a disaggregated run the batch comes from rollout workers) ->
old-policy and reference log-probs (``logprobs``) -> shaped rewards (``rewards``) -> group-relative
advantages (``advantages``) -> mini-batch updates with the GRPO loss (``update``) -> metrics, each
reduced over data-parallel ranks to its global value (``metrics``; r1hpc.monitor.reduce). The
log-prob passes and the updates through megatron's schedules live in r1hpc.train.grpo_update.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Iterator, Optional

import torch

from r1hpc.algo.advantages import group_advantages
from r1hpc.algo.kl import kl_penalized_rewards
from r1hpc.algo.mismatch import add_mismatch_metrics
from r1hpc.algo.loss import AlgoConfig
from r1hpc.algo.sampling_utils import informative_groups, overlong_penalty
from r1hpc.config import ConfigError
from r1hpc.data.problem import Problem
from r1hpc.device import HOST, collective_device
from r1hpc.monitor.reduce import StepMetrics, union
from r1hpc.rollout.generate import RolloutConfig, Sample, response_text
from r1hpc.rollout.groups import rollout_groups
from r1hpc.train.batching import pack_rows
from r1hpc.train.engine import Engine, OptimConfig
from r1hpc.train.grpo_update import GRPOUpdate, _tp_group
from r1hpc.train.routing import TrainerRouting
from r1hpc.train.shared_prefix import check_shared_prefix_supported
from r1hpc.model.routing_replay import RoutingReplayConfig


@dataclasses.dataclass
class GRPOConfig:
    """The RL loop. ``mini_batches`` optimizer updates per rollout batch (each over 1/mini_batches
    of the rows), repeated ``epochs`` times; with one update in total the step is on-policy and the
    old log-probs equal the current ones."""

    steps: int = 100
    mini_batches: int = 2
    epochs: int = 1
    micro_batch_size: int = 64
    skip_zero_advantage_groups: bool = True
    dynamic_sampling_max_rounds: int = 3
    eval_every: int = 0
    time_limit_minutes: Optional[float] = None
    # each group's prompt through the model once per micro-batch, its responses attending to it
    # (r1hpc.train.shared_prefix): the same gradients, fewer tokens when prompts are long
    shared_prefix: bool = False
    # seeds the RL phase (prompt order, rollout sampling); null: run.seed. run.seed also seeds the
    # base, so repeats of RL from one base vary this alone
    seed: Optional[int] = None
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)

    def validate(self) -> None:
        if min(self.steps, self.mini_batches, self.epochs, self.micro_batch_size) < 1:
            raise ConfigError("steps, mini_batches, epochs and micro_batch_size must be >= 1")

    def optimizer(self) -> OptimConfig:
        """``optim`` with ``decay_steps: null`` resolved to the most updates the run makes."""
        return self.optim.for_stage(self.steps * self.mini_batches * self.epochs)


@dataclasses.dataclass
class StepBatch:
    """This rank's share of a step's rollouts: G samples per problem, group after group, with scores."""

    samples: list[Sample]
    scores: list[dict[str, float]]
    problems: list[Problem]
    groups_dropped: int = 0  # dynamic sampling: uninformative groups drawn and dropped
    source_metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # a disaggregated run's exchange


class _Clock:
    """The step's wall-clock phases, as ``timing/<phase>_s``."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.laps[f"timing/{phase}_s"] = now - self.last
        self.last = now

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class GRPOTrainer:
    """Owns the policy engine, the frozen reference engine and the reward scorer for a run."""

    def __init__(self, policy: Engine, reference: Optional[Engine], *, tokenizer, scorer, algo: AlgoConfig,
                 rollout: RolloutConfig, grpo: GRPOConfig, render, problems: Iterator[Problem], seed: int,
                 monitor=None, source=None, routing: Optional[RoutingReplayConfig] = None) -> None:
        from megatron.core import parallel_state

        self.policy, self.reference, self.tok, self.scorer = policy, reference, tokenizer, scorer
        self.algo = algo.with_sampling_temperature(rollout.temperature)
        self.rollout_cfg, self.cfg, self.render = rollout, grpo, render
        self.problems, self.seed = problems, seed
        self.monitor = monitor  # r1hpc.monitor.Monitor: reads each rollout batch, adds its metrics
        # r1hpc.disagg.source.ExchangeSource: batches come from rollout workers, weights go back to them
        self.source = source
        self.dp = parallel_state.get_data_parallel_world_size()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_group = parallel_state.get_data_parallel_group() if self.dp > 1 else None
        if rollout.prompts_per_step % self.dp:
            raise ConfigError(f"rollout.prompts_per_step ({rollout.prompts_per_step}) must be divisible by the "
                              f"data-parallel size ({self.dp})")
        needs_ref = algo.beta > 0
        if needs_ref and reference is None:
            raise ConfigError("algo.beta > 0 needs a reference model")
        if grpo.shared_prefix:
            check_shared_prefix_supported(policy)
        # MoE routing replay (R3) and router agreement (r1hpc.train.routing); None: neither applies
        self.routing = TrainerRouting.build(routing, policy.module, reference.module if reference else None)
        self.updater = GRPOUpdate(self.algo, grpo, vocab_size=tokenizer.vocab_size, group_size=rollout.group_size,
                                  max_new_tokens=rollout.max_new_tokens, dp=self.dp, routing=self.routing)
        self.step = 0

    def state_dict(self) -> dict:
        """What exact resume needs from the trainer: the step (it seeds the rollout sampler) and the
        prompt stream's position (``problems`` must then be a StreamCursor). There is no rollout
        buffer to save: each step rolls out afresh and consumes its rollouts within the step."""
        state = {"step": self.step, "problems": self.problems.state_dict()}
        if self.monitor is not None:
            state["monitor"] = self.monitor.state_dict()
        if self.source is not None:
            state["source"] = self.source.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.problems.load_state_dict(state["problems"])
        if self.monitor is not None:
            self.monitor.load_state_dict(state["monitor"])
        if self.source is not None and "source" in state:
            self.source.load_state_dict(state["source"])

    # ----------------------------------------------------------------- the step
    def train_step(self) -> dict[str, float]:
        """One GRPO step; returns its metrics, global over data-parallel ranks."""
        clock = _Clock()
        batch = self.rollout_and_score()
        clock.lap("rollout_reward")
        rows = self.logprobs(batch)
        rewards = self.rewards(batch, rows)
        clock.lap("logprob")
        adv = self.advantages(batch, rewards)
        metrics = self.rollout_metrics(batch, rewards)
        self.mismatch(rows, metrics)
        if rows is not None:
            self.updater.update(self.policy, rows, adv, metrics)
        clock.lap("train")
        out = self.metrics(batch, metrics, clock)
        self.step += 1
        return out

    def rollout_and_score(self) -> StepBatch:
        """This rank's rollouts with their rewards: from the exchange in a disaggregated run, else
        sampled and scored here (with dynamic sampling, uninformative groups dropped and refilled)."""
        if self.source is not None:
            samples, scores, problems, source_metrics = self.source.collect(self.step, self.problems)
            return StepBatch(samples, scores, problems, source_metrics=source_metrics)
        return self._collect()

    def logprobs(self, batch: StepBatch) -> Optional[dict]:
        """The batch packed into rows, with old-policy and reference log-probs where the loss needs them."""
        if not batch.samples:
            return None
        return self.updater.logprobs(self.policy, self.reference, pack_rows(batch.samples, self.tok.pad_id))

    def rewards(self, batch: StepBatch, rows: Optional[dict]) -> torch.Tensor:
        """Per-sample rewards with overlong shaping and, with algo.kl_in_reward, the KL penalty."""
        rewards = torch.tensor([s["total"] for s in batch.scores], dtype=torch.float32, device=HOST)
        if self.algo.overlong_buffer_len:
            rewards = rewards + overlong_penalty(_lengths(batch), self.rollout_cfg.max_new_tokens,
                                                 self.algo.overlong_buffer_len, self.algo.overlong_penalty)
        if rows is not None and self.algo.kl_in_reward and "ref_logp" in rows:
            rewards = kl_penalized_rewards(rewards, rows.get("old_logp", rows["rollout_logp"]), rows["ref_logp"],
                                           rows["response_mask"], self.algo.beta, self.algo.kl_kind)
        return rewards

    def mismatch(self, rows: Optional[dict], metrics: StepMetrics) -> None:
        """Rollout/trainer mismatch (r1hpc.algo.mismatch) where the old policy was recomputed, and a MoE
        policy's router agreement (already global: a collective every rank calls)."""
        if rows is not None and "old_logp" in rows:
            add_mismatch_metrics(metrics, rows["rollout_logp"], rows["old_logp"], rows["response_mask"])
        if self.routing is not None:
            for k, v in self.routing.step_metrics().items():
                metrics.same(k, v)

    def advantages(self, batch: StepBatch, rewards: torch.Tensor) -> torch.Tensor:
        """Group-relative advantages, one per sample."""
        if not batch.problems:
            return rewards
        G = self.rollout_cfg.group_size
        return group_advantages(rewards.view(len(batch.problems), G), self.algo.advantage_estimator,
                                self.algo.adv_eps).view(-1)

    # ----------------------------------------------------------------- rollout and rewards
    def _rollout(self, problems: list[Problem]) -> list[Sample]:
        return rollout_groups(self.policy.module, self.tok, problems, render=self.render, rollout=self.rollout_cfg,
                              seed=self.seed, step=self.step, shard=self.dp_rank,
                              max_seq_length=self.policy.model_cfg.max_seq_length, train_state=self.policy)

    def _score(self, samples: list[Sample], problems: list[Problem]) -> list[dict[str, float]]:
        """Score on TP rank 0 of each model-parallel group and share: TP ranks hold identical samples."""
        from megatron.core import parallel_state

        G = self.rollout_cfg.group_size
        scores = None
        if parallel_state.get_tensor_model_parallel_rank() == 0:
            texts = [response_text(self.tok, s) for s in samples]
            scores = self.scorer.score_batch(texts, [p for p in problems for _ in range(G)])
        if parallel_state.get_tensor_model_parallel_world_size() > 1:
            box = [scores]
            torch.distributed.broadcast_object_list(box, src=parallel_state.get_tensor_model_parallel_src_rank(),
                                                    group=_tp_group())
            scores = box[0]
        return scores

    def _collect(self) -> StepBatch:
        """Roll out this rank's prompts; with dynamic sampling keep only informative groups and refill."""
        n_local = self.rollout_cfg.prompts_per_step // self.dp
        G = self.rollout_cfg.group_size
        out = StepBatch([], [], [])
        rounds = self.cfg.dynamic_sampling_max_rounds if self.algo.dynamic_sampling else 1
        for _ in range(rounds):
            need = n_local - len(out.problems)
            if need <= 0:
                break
            batch = self._take_problems(need)
            s = self._rollout(batch)
            sc = self._score(s, batch)
            if self.algo.dynamic_sampling:
                r = torch.tensor([x["total"] for x in sc], device=HOST).view(len(batch), G)
                keep = set(informative_groups(r).tolist())
                out.groups_dropped += len(batch) - len(keep)
                batch_kept = [p for i, p in enumerate(batch) if i in keep]
                s = [x for i, x in enumerate(s) if i // G in keep]
                sc = [x for i, x in enumerate(sc) if i // G in keep]
                batch = batch_kept
            out.samples += s
            out.scores += sc
            out.problems += batch
        return out

    def _take_problems(self, n: int) -> list[Problem]:
        """Every DP rank draws the same global batch from the shared stream and keeps its own slice."""
        batch = [next(self.problems) for _ in range(n * self.dp)]
        return batch[self.dp_rank::self.dp]

    # ----------------------------------------------------------------- metrics
    def rollout_metrics(self, batch: StepBatch, rewards: torch.Tensor) -> StepMetrics:
        """The rollout batch's metrics, each declared with its reduction over data-parallel ranks."""
        m = StepMetrics(self.dp_group)
        G = self.rollout_cfg.group_size
        m.mean("reward/mean", rewards)
        m.std("reward/std", rewards)
        zero_std = float((rewards.view(-1, G).std(1) == 0).sum()) if batch.problems else 0.0
        m.mean_of("reward/frac_zero_std", zero_std, float(len(batch.problems)), empty=1.0)
        # every rank reports every reward key any rank scored: a sample without one counts 0
        for k in sorted(union(sorted({k for s in batch.scores for k in s if k != "total"}), self.dp_group)):
            m.mean(f"reward/{k}", [s.get(k, 0.0) for s in batch.scores])
        ent = [s.entropies for s in batch.samples]
        m.mean("rollout/entropy", torch.cat(ent) if ent else [], empty=None)
        m.mean("response_length/mean", _lengths(batch), empty=None)
        m.max("response_length/max", _lengths(batch))
        m.mean("response_length/clip_ratio", [float(s.truncated) for s in batch.samples], empty=None)
        if self.algo.dynamic_sampling:
            m.sum("dynamic_sampling/groups_dropped", float(batch.groups_dropped))
        m.sum("reward/timeouts", float(getattr(self.scorer, "timeouts", 0)))  # each rank's own reward pool
        m.sum("reward/errors", float(getattr(self.scorer, "errors", 0)))
        return m

    def metrics(self, batch: StepBatch, metrics: StepMetrics, clock: _Clock) -> dict[str, float]:
        """The step's global metrics: rollout and update metrics reduced, then the curriculum, the
        monitor (which reads them), the disaggregated exchange and the timings."""
        if hasattr(self.problems, "observe"):  # a curriculum re-weights the next draws by these rewards
            for k, v in self._observe_curriculum(batch.problems, batch.scores).items():
                metrics.same(k, v)
        out = metrics.reduce()
        tail = StepMetrics(self.dp_group)
        if self.monitor is not None:
            G = self.rollout_cfg.group_size
            seen = self.monitor.observe(self.step + 1, batch.samples, batch.scores,
                                        [p for p in batch.problems for _ in range(G)], out)
            tail.max("timing/monitor_s", seen.pop("timing/monitor_s"))
            out.update(seen)  # the monitor's metrics are already summed over data-parallel ranks
        source_metrics = dict(batch.source_metrics)
        if self.source is not None:  # workers may start on the next batch as soon as these weights land
            source_metrics["disagg/publish_s"] = self.source.publish(self.step + 1)
        for k, v in source_metrics.items():  # equal on every rank, or counted on rank 0 only (0 elsewhere)
            tail.max(k, v)
        for k, v in clock.laps.items():  # the slowest rank sets the step's time
            tail.max(k, v)
        tail.max("timing/step_s", clock.elapsed())
        tail.sum("perf/tokens", float(sum(len(s.prompt_ids) + len(s.response_ids) for s in batch.samples)))
        tail.sum("perf/response_tokens", float(_lengths(batch).sum()))
        out.update(tail.reduce())
        if source_metrics:
            out["disagg/idle_frac"] = out["disagg/idle_s"] / out["timing/step_s"]
        out["perf/tokens_per_s"] = out.pop("perf/tokens") / out["timing/step_s"]
        return out

    def _observe_curriculum(self, problems: list[Problem], scores: list[dict]) -> dict[str, float]:
        """Per task, the sum over its groups of p(1 - p) (p = the group's mean accuracy) and the group
        count, summed over DP ranks so every rank's stream sees the same numbers."""
        tasks = self.problems.tasks
        G = self.rollout_cfg.group_size
        sums = torch.zeros(len(tasks), 2, dtype=torch.float64, device=HOST)
        for g, p in enumerate(problems):
            acc = [s.get("accuracy", s["total"]) for s in scores[g * G:(g + 1) * G]]
            mean = sum(acc) / G
            sums[tasks.index(p.data_source)] += torch.tensor([mean * (1 - mean), 1.0], dtype=torch.float64, device=HOST)
        if self.dp > 1:
            from megatron.core import parallel_state

            group = parallel_state.get_data_parallel_group()
            sums = sums.to(collective_device(group))
            torch.distributed.all_reduce(sums, group=group)
            sums = sums.to(HOST)
        self.problems.observe({t: (float(sums[i, 0]), float(sums[i, 1])) for i, t in enumerate(tasks)})
        out = {f"curriculum/weight/{t}": w for t, w in zip(tasks, self.problems.weights())}
        out.update({f"curriculum/learnability/{t}": v for t, v in self.problems.learnability.items() if v is not None})
        return out


def _lengths(batch: StepBatch) -> torch.Tensor:
    return torch.tensor([len(s.response_ids) for s in batch.samples], dtype=torch.float32, device=HOST)
