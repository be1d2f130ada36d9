"""The learning half of a GRPO step on megatron-core: the old-policy and reference log-prob passes
(forward-only schedules) and the mini-batch updates with the GRPO loss through megatron's
forward-backward schedule. Loss normalisation is global: aggregation weights use the step's
token/sequence counts summed over DP ranks, and the per-micro-batch loss is pre-multiplied by
(micro-batches x DP size) to cancel megatron's averaging, so the gradient is exactly that of the
configured aggregation mode over the whole mini-batch.
"""
from __future__ import annotations

import contextlib
import math
from functools import partial
from typing import Optional

import torch

from r1hpc.algo.logprobs import token_logp
from r1hpc.algo.loss import AlgoConfig, aggregation_weights, grpo_loss
from r1hpc.algo.mismatch import add_correction_metrics
from r1hpc.algo.sampling_utils import rollout_is_weights
from r1hpc.device import HOST, collective_device
from r1hpc.model.provider import causal_attention_mask
from r1hpc.monitor.reduce import StepMetrics
from r1hpc.train.batching import split_rows
from r1hpc.train.engine import Engine
from r1hpc.train.fused_output import FusedOutputLayer
from r1hpc.train.lm_loss import mask_vocab_padding, position_ids
from r1hpc.train.shared_prefix import SharedPrefixLayout, shared_prefix_forward, shared_prefix_layout


def _tp_group():
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_group()


def _vocab_start(engine: Engine) -> int:
    from megatron.core import parallel_state

    shard = engine.module.vocab_size // parallel_state.get_tensor_model_parallel_world_size()  # padded vocab
    return parallel_state.get_tensor_model_parallel_rank() * shard


def _logits(model, inputs: tuple, vocab_size: int) -> torch.Tensor:
    """This rank's [b, s, V_local] logits with megatron's vocab padding (to a multiple of 128 x TP)
    masked out: the sampler draws from the real vocabulary only, so the trainer's log-probs and
    entropies must too (and must not depend on the TP size through the padding)."""
    return mask_vocab_padding(model(*inputs), vocab_size)


def _model_inputs(mb: dict) -> tuple:
    """(tokens, position ids, attention mask) of the rows as they are, or of their shared-prefix layout."""
    layout = SharedPrefixLayout.of(mb)
    if layout is not None:
        return layout.model_inputs()
    tokens = mb["tokens"]
    return tokens, position_ids(tokens), causal_attention_mask(tokens.shape[1], tokens.device)


def _at(mb: dict, output: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """The model's output at the ``sel`` positions of the micro-batch's rows."""
    layout = SharedPrefixLayout.of(mb)
    return output[sel] if layout is None else layout.pick(output, sel)


def _routing_rows(mb: dict, layout: Optional[SharedPrefixLayout]) -> dict:
    """The routing and response mask per position of the rows the model sees."""
    if layout is None or "routing" not in mb:
        return mb
    return {"routing": layout.rows_of(mb["routing"], -1), "response_mask": layout.rows_of(mb["response_mask"], False)}


def _logp_loss_func(mb: dict, temperature: float, vocab_start: int, logp_fn, logits: torch.Tensor):
    sel = mb["response_mask"]
    logp, entropy = logp_fn(_at(mb, logits, sel), mb["targets"][sel], temperature=temperature,
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
        # no old_logp: on-policy (``logprobs`` scores the old policy only for more than one update
        # per rollout), so the loss takes its own log-probs, detached: ratio 1, no extra pass
        _at(mb, logits, sel), mb["targets"][sel], mb["old_logp"][sel] if "old_logp" in mb else None,
        mb["advantages"][sel], mb["weights"][sel],
        ref_logp=mb["ref_logp"][sel] if "ref_logp" in mb else None,
        tis_weight=mb["tis_weight"][sel] if "tis_weight" in mb else None,
        tp_group=_tp_group(), vocab_start_index=vocab_start, params=algo.loss_params())
    stats = {"tokens": sel.sum().float()}
    for k, name in _LOSS_METRICS.items():
        if k in m:
            stats[name] = m[k].detach().float() * stats["tokens"]  # token-weighted, normalised later
    return loss * scale, stats


class GRPOUpdate:
    """Log-prob passes and optimizer updates over one step's packed rows (``pack_rows``)."""

    def __init__(self, algo: AlgoConfig, grpo, *, vocab_size: int, group_size: int, max_new_tokens: int,
                 dp: int, routing=None) -> None:
        """``grpo``: the GRPOConfig; ``algo`` is shared with the trainer (one object); ``routing``: the
        trainer's r1hpc.train.routing.TrainerRouting (MoE routing replay / record), or None."""
        self.algo, self.cfg, self.routing = algo, grpo, routing
        self.vocab_size, self.group_size, self.max_new_tokens, self.dp = vocab_size, group_size, max_new_tokens, dp

    def logprobs(self, policy: Engine, reference: Optional[Engine], rows: dict) -> dict:
        """``rows`` with old-policy log-probs (when the step takes more than one update, or truncated
        IS needs them) and reference log-probs (when the loss has a KL term), row-aligned."""
        micro = self._split(rows, max(1, self._global_micro_count(rows["tokens"].shape[0])), policy)
        if self.cfg.mini_batches * self.cfg.epochs > 1 or self.algo.corrects_rollout:
            for mb, lp in zip(micro, self.forward_logp(policy, micro)):
                mb["old_logp"] = lp
        if reference is not None and self.algo.beta > 0:
            for mb, lp in zip(micro, self.forward_logp(reference, micro)):
                mb["ref_logp"] = lp
        return self._merge_micro(rows, micro)

    def _split(self, rows: dict, n_micro: int, engine: Engine) -> list[dict]:
        """``n_micro`` micro-batches of ``rows``, each with its shared-prefix layout when the step uses one."""
        micro = split_rows(rows, self.cfg.micro_batch_size, n_micro, engine.seq_multiple)
        if self.cfg.shared_prefix:
            for mb in micro:
                layout = shared_prefix_layout(mb["tokens"], mb["response_mask"], engine.seq_multiple)
                if layout is not None:  # else a filler: its rows as they are
                    mb["shared_prefix"] = layout
        return micro

    def forward_logp(self, engine: Engine, micro: list[dict]) -> list[torch.Tensor]:
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
        algo.fused_output the hidden states with the fused output layer's equivalents; of the rows as
        they are or of their shared-prefix layout (the loss functions read them back with ``_at``)."""
        layout = SharedPrefixLayout.of(mb)
        with contextlib.ExitStack() as scope:
            if layout is not None:
                scope.enter_context(shared_prefix_forward(model, layout))
            if self.routing:  # R3 replay / record
                scope.enter_context(self.routing.forward(model, _routing_rows(mb, layout)))
            if self.algo.fused_output:
                layer = FusedOutputLayer(model, self.vocab_size)
                return layer.forward(*_model_inputs(mb)), layer.logp, layer.loss
            return _logits(model, _model_inputs(mb), self.vocab_size), token_logp, grpo_loss

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

    def update(self, policy: Engine, rows: dict, adv: torch.Tensor, metrics: StepMetrics) -> None:
        """``mini_batches`` optimizer updates per epoch over whole groups; declares the actor metrics."""
        mask = rows["response_mask"]
        B = mask.shape[0]
        rows["advantages"] = adv[:, None].expand_as(mask).contiguous().float()
        if self.algo.corrects_rollout:
            a = self.algo
            rows["tis_weight"], rows["is_kept"] = rollout_is_weights(
                rows["old_logp"], rows["rollout_logp"], mask, level=a.is_level, cap=a.tis_cap, low=a.mis_low,
                high=a.mis_high)
            add_correction_metrics(metrics, rows["tis_weight"], rows["is_kept"], mask, cap=a.tis_cap)
        G = self.group_size
        totals: dict[str, float] = {}
        grad_norms = []
        for _ in range(self.cfg.epochs):
            for part in range(self.cfg.mini_batches):
                # whole groups share a mini-batch, so every group's rows are updated together
                groups = torch.arange(B // G, device=HOST)[part::self.cfg.mini_batches]
                idx = (groups[:, None] * G + torch.arange(G, device=HOST)[None]).view(-1)
                out = self._mini_batch(policy, {k: v[idx] for k, v in rows.items()})
                if out is None:
                    continue
                grad_norms.append(out["grad_norm"])
                for o in out["outputs"]:
                    for k, v in o.items():
                        totals[k] = totals.get(k, 0.0) + float(v)
        tokens = totals.pop("tokens", 0.0)
        for k, v in totals.items():  # token-weighted over every rank's tokens
            metrics.mean_of(f"actor/{k}", v, tokens)
        # megatron's gradient norm is global, and every rank runs the same number of updates
        metrics.same("actor/grad_norm", sum(grad_norms) / len(grad_norms) if grad_norms else 0.0)
        metrics.same("actor/updates", float(len(grad_norms)))

    def _mini_batch(self, policy: Engine, sub: dict) -> Optional[dict]:
        """One optimizer update over this rank's rows of a mini-batch; None when no rank has a row to learn from."""
        mask = sub["response_mask"]
        if "is_kept" in sub:  # masked IS: rejected tokens (and responses) leave the loss and its normaliser
            rejected_rows = float((mask.any(dim=1) & ~sub["is_kept"].any(dim=1)).sum())
            mask = sub["is_kept"]
        else:
            rejected_rows = 0.0
        n_seqs = self._dp_sum(float(sub["tokens"].shape[0]) - rejected_rows)
        n_tokens = self._dp_sum(float(mask.sum()))
        sub["weights"] = aggregation_weights(mask, self.algo.loss_agg_mode, max_len=self.max_new_tokens,
                                             num_tokens=max(n_tokens, 1.0), num_seqs=max(n_seqs, 1.0))
        if self.cfg.skip_zero_advantage_groups and self.algo.beta == 0 and self.algo.entropy_coef == 0:
            # exact: with no KL/entropy term a zero-advantage token has zero loss and gradient
            sub["weights"] = sub["weights"] * (sub["advantages"] != 0)
        keep = sub["weights"].sum(1) > 0
        sub = {k: v[keep] for k, v in sub.items()}
        n_micro = self._global_micro_count(int(keep.sum()))
        if n_micro == 0:  # every group on every rank has zero advantage: nothing to learn
            return None
        micro = self._split(sub, n_micro, policy)
        scale = float(n_micro * self.dp)
        step = partial(self._loss_step, _vocab_start(policy), scale)
        width = max(mb["tokens"].shape[1] for mb in micro)
        return policy.train_step(step, micro, seq_length=width, micro_batch_size=self.cfg.micro_batch_size)

    def _loss_step(self, vocab_start: int, scale: float, data_iterator, model):
        mb = next(data_iterator)
        logits, _, loss_fn = self._forward(model, mb)
        return logits, partial(_grpo_loss_func, mb, self.algo, vocab_start, scale, loss_fn)
