"""The GRPO step (DESIGN section 3) on megatron-core, colocated: every rank holds its policy shard,
rolls out, scores through the reward pool, and updates.

One step: sample prompts (sharded over data-parallel ranks) -> G responses each with the KV-cached
sampler -> rewards in worker processes -> old-policy and reference log-probs (forward-only
schedules) -> group-relative advantages -> mini-batch updates with the GRPO loss through megatron's
forward-backward schedule -> metrics. Loss normalisation is global: aggregation weights use the
step's token/sequence counts summed over DP ranks, and the per-micro-batch loss is pre-multiplied
by (micro-batches x DP size) to cancel megatron's averaging, so the gradient is exactly that of
the configured aggregation mode over the whole mini-batch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from functools import partial
from typing import Iterator, Optional

import torch

from r1hpc.algo.advantages import group_advantages
from r1hpc.algo.kl import kl_penalized_rewards
from r1hpc.algo.logprobs import token_logp
from r1hpc.algo.mismatch import dp_group_or_none, mismatch_metrics
from r1hpc.algo.loss import AlgoConfig, aggregation_weights, grpo_loss
from r1hpc.algo.sampling_utils import informative_groups, overlong_penalty, truncated_is_weights
from r1hpc.config import ConfigError
from r1hpc.data.problem import Problem
from r1hpc.device import HOST, collective_device
from r1hpc.rollout.generate import RolloutConfig, Sample, response_text
from r1hpc.rollout.groups import rollout_groups
from r1hpc.train.batching import pack_rows, split_rows
from r1hpc.train.engine import Engine
from r1hpc.train.fused_output import FusedOutputLayer
from r1hpc.train.routing import TrainerRouting
from r1hpc.train.lm_loss import mask_vocab_padding, position_ids
from r1hpc.model.provider import causal_attention_mask
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

    def validate(self) -> None:
        if min(self.steps, self.mini_batches, self.epochs, self.micro_batch_size) < 1:
            raise ConfigError("steps, mini_batches, epochs and micro_batch_size must be >= 1")


def _tp_group():
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_group()


def _vocab_start(engine: Engine) -> int:
    from megatron.core import parallel_state

    shard = engine.module.vocab_size // parallel_state.get_tensor_model_parallel_world_size()  # padded vocab
    return parallel_state.get_tensor_model_parallel_rank() * shard


def _logits(model, mb: dict, vocab_size: int) -> torch.Tensor:
    """This rank's [b, s, V_local] logits with megatron's vocab padding (to a multiple of 128 x TP)
    masked out: the sampler draws from the real vocabulary only, so the trainer's log-probs and
    entropies must too (and must not depend on the TP size through the padding)."""
    tokens = mb["tokens"]
    return mask_vocab_padding(model(tokens, position_ids(tokens), causal_attention_mask(tokens.shape[1], tokens.device)),
                              vocab_size)


def _logp_loss_func(mb: dict, temperature: float, vocab_start: int, logp_fn, logits: torch.Tensor):
    sel = mb["response_mask"]
    logp, entropy = logp_fn(logits[sel], mb["targets"][sel], temperature=temperature,
                            tp_group=_tp_group(), vocab_start_index=vocab_start)
    full = torch.zeros(sel.shape, device=logits.device)
    full[sel] = logp.float()
    return torch.zeros((), device=logits.device), {"logp": full}


_LOSS_METRICS = {"clipfrac_low": "pg_clipfrac_low", "clipfrac_high": "pg_clipfrac_high", "kl_mean": "kl",
                 "entropy_mean": "entropy", "ratio_mean": "ratio_mean"}


def _grpo_loss_func(mb: dict, algo: AlgoConfig, vocab_start: int, scale: float, loss_fn, logits: torch.Tensor):
    sel = mb["weights"] > 0
    if not bool(sel.any()):  # filler micro-batch: keep the graph, contribute nothing
        return logits.sum() * 0.0, {"tokens": torch.zeros((), device=logits.device)}
    loss, m = loss_fn(
        logits[sel], mb["targets"][sel], mb["old_logp"][sel], mb["advantages"][sel], mb["weights"][sel],
        ref_logp=mb["ref_logp"][sel] if "ref_logp" in mb else None,
        tis_weight=mb["tis_weight"][sel] if "tis_weight" in mb else None,
        tp_group=_tp_group(), vocab_start_index=vocab_start, **algo.loss_kwargs())
    stats = {"tokens": sel.sum().float()}
    for k, name in _LOSS_METRICS.items():
        if k in m:
            stats[name] = m[k].detach().float() * stats["tokens"]  # token-weighted, normalised later
    return loss * scale, stats


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
        if rollout.prompts_per_step % self.dp:
            raise ConfigError(f"rollout.prompts_per_step ({rollout.prompts_per_step}) must be divisible by the "
                              f"data-parallel size ({self.dp})")
        needs_ref = algo.beta > 0
        if needs_ref and reference is None:
            raise ConfigError("algo.beta > 0 needs a reference model")
        self.step = 0
        # MoE routing replay (R3) and router agreement (r1hpc.train.routing); None: neither applies
        self.routing = TrainerRouting.build(routing, policy.module, reference.module if reference else None)

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

    # ----------------------------------------------------------------- rollout and rewards
    def _rollout(self, problems: list[Problem]) -> list[Sample]:
        return rollout_groups(self.policy.module, self.tok, problems, render=self.render, rollout=self.rollout_cfg,
                              seed=self.seed, step=self.step, shard=self.dp_rank,
                              max_seq_length=self.policy.model_cfg.max_seq_length)

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

    def _collect(self) -> tuple[list[Sample], list[dict], list[Problem], dict]:
        """Roll out this rank's prompts; with dynamic sampling keep only informative groups and refill."""
        n_local = self.rollout_cfg.prompts_per_step // self.dp
        G = self.rollout_cfg.group_size
        samples, scores, problems = [], [], []
        stats = {"groups_sampled": 0, "groups_dropped": 0}
        rounds = self.cfg.dynamic_sampling_max_rounds if self.algo.dynamic_sampling else 1
        for _ in range(rounds):
            need = n_local - len(problems)
            if need <= 0:
                break
            batch = self._take_problems(need)
            s = self._rollout(batch)
            sc = self._score(s, batch)
            stats["groups_sampled"] += len(batch)
            if self.algo.dynamic_sampling:
                r = torch.tensor([x["total"] for x in sc], device=HOST).view(len(batch), G)
                keep = set(informative_groups(r).tolist())
                stats["groups_dropped"] += len(batch) - len(keep)
                batch_kept = [p for i, p in enumerate(batch) if i in keep]
                s = [x for i, x in enumerate(s) if i // G in keep]
                sc = [x for i, x in enumerate(sc) if i // G in keep]
                batch = batch_kept
            samples += s
            scores += sc
            problems += batch
        return samples, scores, problems, stats

    def _take_problems(self, n: int) -> list[Problem]:
        """Every DP rank draws the same global batch from the shared stream and keeps its own slice."""
        batch = [next(self.problems) for _ in range(n * self.dp)]
        return batch[self.dp_rank::self.dp]

    # ----------------------------------------------------------------- log-probs
    def _forward_logp(self, engine: Engine, micro: list[dict]) -> list[torch.Tensor]:
        width = max(mb["tokens"].shape[1] for mb in micro)
        step = partial(self._logp_step, _vocab_start(engine))
        outs = engine.run_schedule(step, micro, seq_length=width, micro_batch_size=self.cfg.micro_batch_size,
                                   forward_only=True)
        return [o["logp"] for o in outs]

    def _logp_step(self, vocab_start: int, data_iterator, model):
        mb = next(data_iterator)
        output, logp_fn, _ = self._forward(model, mb)
        return output, partial(_logp_loss_func, mb, self.algo.temperature, vocab_start, logp_fn)

    def _forward(self, model, mb: dict):
        """(output, logp_fn, loss_fn): the logits with token_logp and grpo_loss, or with
        algo.fused_output the hidden states with the fused output layer's equivalents."""
        with self.routing.forward(model, mb) if self.routing else contextlib.nullcontext():  # R3 replay / record
            if self.algo.fused_output:
                layer = FusedOutputLayer(model, self.tok.vocab_size)
                return layer.forward(mb["tokens"]), layer.logp, layer.loss
            return _logits(model, mb, self.tok.vocab_size), token_logp, grpo_loss

    # ----------------------------------------------------------------- the step
    def train_step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        source_metrics: dict[str, float] = {}
        if self.source is not None:
            samples, scores, problems, source_metrics = self.source.collect(self.step, self.problems)
            ds_stats = {}
        else:
            samples, scores, problems, ds_stats = self._collect()
        t_rollout_reward = time.perf_counter() - t0
        G = self.rollout_cfg.group_size
        n_groups = len(problems)
        rewards = torch.tensor([s["total"] for s in scores], dtype=torch.float32, device=HOST)
        lengths = torch.tensor([len(s.response_ids) for s in samples], dtype=torch.float32, device=HOST)
        if self.algo.overlong_buffer_len:
            rewards = rewards + overlong_penalty(lengths, self.rollout_cfg.max_new_tokens,
                                                 self.algo.overlong_buffer_len, self.algo.overlong_penalty)

        t1 = time.perf_counter()
        rows = pack_rows(samples, self.tok.pad_id) if samples else None
        num_updates = self.cfg.mini_batches * self.cfg.epochs
        metrics: dict[str, float] = {}
        if rows is not None:
            n_micro_all = max(1, self._global_micro_count(rows["tokens"].shape[0]))
            micro_all = split_rows(rows, self.cfg.micro_batch_size, n_micro_all, self.policy.seq_multiple)
            need_old = num_updates > 1 or self.algo.tis_cap is not None
            if need_old:
                old = self._forward_logp(self.policy, micro_all)
                if old:
                    for mb, lp in zip(micro_all, old):
                        mb["old_logp"] = lp
            if self.reference is not None and (self.algo.beta > 0):
                ref = self._forward_logp(self.reference, micro_all)
                for mb, lp in zip(micro_all, ref):
                    mb["ref_logp"] = lp
            rows = self._merge_micro(rows, micro_all)
            if "old_logp" in rows:  # rollout/trainer mismatch figures (r1hpc.algo.mismatch)
                metrics.update(mismatch_metrics(rows["rollout_logp"], rows["old_logp"], rows["response_mask"],
                                                dp_group_or_none(self.dp)))
            if self.algo.kl_in_reward and "ref_logp" in rows:
                rewards = kl_penalized_rewards(rewards, rows.get("old_logp", rows["rollout_logp"]), rows["ref_logp"],
                                               rows["response_mask"], self.algo.beta, self.algo.kl_kind)
        if self.routing is not None:  # router agreement (replay off), on every rank: it sums over all
            metrics.update(self.routing.step_metrics())
        t_logp = time.perf_counter() - t1

        adv = group_advantages(rewards.view(n_groups, G), self.algo.advantage_estimator, self.algo.adv_eps).view(-1) \
            if n_groups else rewards
        zero_std = (rewards.view(n_groups, G).std(1) == 0).float().mean().item() if n_groups else 1.0

        t2 = time.perf_counter()
        update_stats = self._update(rows, adv) if rows is not None else {}
        t_train = time.perf_counter() - t2

        metrics.update(self._rollout_metrics(scores, samples, rewards, lengths, zero_std, ds_stats))
        if hasattr(self.problems, "observe"):  # a curriculum re-weights the next draws by these rewards
            metrics.update(self._observe_curriculum(problems, scores))
        metrics.update(update_stats)
        if self.monitor is not None:
            metrics.update(self.monitor.observe(self.step + 1, samples, scores, [p for p in problems for _ in range(G)],
                                                metrics))
        if self.source is not None:  # workers may start on the next batch as soon as these weights land
            source_metrics["disagg/publish_s"] = self.source.publish(self.step + 1)
        elapsed = time.perf_counter() - t0
        if source_metrics:
            source_metrics["disagg/idle_frac"] = source_metrics["disagg/idle_s"] / elapsed
            metrics.update(source_metrics)
        total_tokens = self._dp_sum(float(sum(len(s.prompt_ids) + len(s.response_ids) for s in samples)))
        metrics.update({"timing/rollout_reward_s": t_rollout_reward, "timing/logprob_s": t_logp,
                        "timing/train_s": t_train, "timing/step_s": elapsed,
                        "perf/tokens_per_s": total_tokens / elapsed,
                        "perf/response_tokens": self._dp_sum(float(lengths.sum()))})
        self.step += 1
        return metrics

    def _merge_micro(self, rows: dict, micro: list[dict]) -> dict:
        """Write per-micro-batch log-probs back into row-aligned [B, L] tensors."""
        B, L = rows["tokens"].shape
        mbs = self.cfg.micro_batch_size
        for key in ("old_logp", "ref_logp"):
            if key in micro[0]:
                full = torch.zeros(B, L, device=HOST)
                for m, mb in enumerate(micro):
                    lo = m * mbs
                    n = min(mbs, B - lo)
                    if n > 0:
                        width = min(L, mb[key].shape[1])  # micro-batches may be padded past L
                        full[lo:lo + n, :width] = mb[key][:n, :width].to(HOST)
                rows[key] = full
        return rows

    def _global_micro_count(self, local_rows: int) -> int:
        """Micro-batches every DP rank runs: the most any rank needs (0 when no rank has rows)."""
        local = float(math.ceil(local_rows / self.cfg.micro_batch_size))
        if self.dp == 1:
            return int(local)
        from megatron.core import parallel_state

        group = parallel_state.get_data_parallel_group()
        n = torch.tensor(local, device=collective_device(group))
        torch.distributed.all_reduce(n, op=torch.distributed.ReduceOp.MAX, group=group)
        return int(n)

    def _dp_sum(self, value: float) -> float:
        if self.dp == 1:
            return value
        from megatron.core import parallel_state

        group = parallel_state.get_data_parallel_group()
        t = torch.tensor(value, dtype=torch.float64, device=collective_device(group))
        torch.distributed.all_reduce(t, group=group)
        return float(t)

    def _update(self, rows: dict, adv: torch.Tensor) -> dict[str, float]:
        mask = rows["response_mask"]
        B = mask.shape[0]
        rows["advantages"] = adv[:, None].expand_as(mask).contiguous().float()
        if "old_logp" not in rows:
            rows["old_logp"] = torch.zeros_like(rows["rollout_logp"])  # replaced below: on-policy
        if self.algo.tis_cap is not None:
            rows["tis_weight"] = truncated_is_weights(rows["old_logp"], rows["rollout_logp"], self.algo.tis_cap)
        on_policy = self.cfg.mini_batches * self.cfg.epochs == 1 and self.algo.tis_cap is None
        G = self.rollout_cfg.group_size
        totals: dict[str, float] = {}
        grad_norms = []
        for _ in range(self.cfg.epochs):
            for part in range(self.cfg.mini_batches):
                # whole groups share a mini-batch, so every group's rows are updated together
                groups = torch.arange(B // G, device=HOST)[part::self.cfg.mini_batches]
                idx = (groups[:, None] * G + torch.arange(G, device=HOST)[None]).view(-1)
                sub = {k: v[idx] for k, v in rows.items()}
                n_seqs, n_tokens = self._dp_sum(float(len(idx))), self._dp_sum(float(sub["response_mask"].sum()))
                sub["weights"] = aggregation_weights(sub["response_mask"], self.algo.loss_agg_mode,
                                                     max_len=self.rollout_cfg.max_new_tokens,
                                                     num_tokens=n_tokens, num_seqs=n_seqs)
                if self.cfg.skip_zero_advantage_groups and self.algo.beta == 0 and self.algo.entropy_coef == 0:
                    # exact: with no KL/entropy term a zero-advantage token has zero loss and gradient
                    sub["weights"] = sub["weights"] * (sub["advantages"] != 0)
                keep = sub["weights"].sum(1) > 0
                sub = {k: v[keep] for k, v in sub.items()}
                n_micro = self._global_micro_count(int(keep.sum()))
                if n_micro == 0:  # every group on every rank has zero advantage: nothing to learn
                    continue
                micro = split_rows(sub, self.cfg.micro_batch_size, n_micro, self.policy.seq_multiple)
                scale = float(n_micro * self.dp)
                step = partial(self._loss_step, _vocab_start(self.policy), scale, on_policy)
                width = max(mb["tokens"].shape[1] for mb in micro)
                out = self.policy.train_step(step, micro, seq_length=width, micro_batch_size=self.cfg.micro_batch_size)
                grad_norms.append(out["grad_norm"])
                for o in out["outputs"]:
                    for k, v in o.items():
                        totals[k] = totals.get(k, 0.0) + float(v)
        tokens = max(totals.pop("tokens", 0.0), 1.0)
        stats = {f"actor/{k}": v / tokens for k, v in totals.items()}
        stats["actor/grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else 0.0
        stats["actor/updates"] = float(len(grad_norms))
        return stats

    def _loss_step(self, vocab_start: int, scale: float, on_policy: bool, data_iterator, model):
        mb = next(data_iterator)
        logits, logp_fn, loss_fn = self._forward(model, mb)
        if on_policy:  # old policy == current policy: ratio is exactly 1, no extra forward needed
            with torch.no_grad():
                sel = mb["response_mask"]
                lp, _ = logp_fn(logits[sel].detach(), mb["targets"][sel], temperature=self.algo.temperature,
                                tp_group=_tp_group(), vocab_start_index=vocab_start)
                mb["old_logp"] = torch.zeros(sel.shape, device=logits.device)
                mb["old_logp"][sel] = lp.float()
        return logits, partial(_grpo_loss_func, mb, self.algo, vocab_start, scale, loss_fn)

    def _rollout_metrics(self, scores, samples, rewards, lengths, zero_std, ds_stats) -> dict[str, float]:
        keys = sorted({k for s in scores for k in s if k != "total"})
        out = {"reward/mean": self._dp_mean(rewards), "reward/std": float(rewards.std()) if len(rewards) > 1 else 0.0,
               "reward/frac_zero_std": zero_std}
        for k in keys:
            out[f"reward/{k}"] = self._dp_mean(torch.tensor([s.get(k, 0.0) for s in scores], device=HOST))
        if samples:
            ent = torch.cat([s.entropies for s in samples])
            out["rollout/entropy"] = float(ent.mean())
            out["response_length/mean"] = self._dp_mean(lengths)
            out["response_length/max"] = float(lengths.max())
            out["response_length/clip_ratio"] = float(torch.tensor([s.truncated for s in samples], device=HOST).float().mean())
        if self.algo.dynamic_sampling:
            out["dynamic_sampling/groups_dropped"] = float(ds_stats["groups_dropped"])
        out["reward/timeouts"] = float(getattr(self.scorer, "timeouts", 0))
        out["reward/errors"] = float(getattr(self.scorer, "errors", 0))
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

    def _dp_mean(self, values: torch.Tensor) -> float:
        return self._dp_sum(float(values.sum())) / max(self._dp_sum(float(values.numel())), 1.0)
