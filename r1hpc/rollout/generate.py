"""Rollout: G responses per prompt from the current policy, with megatron's KV cache.

Prompts are bucketed by token length so each bucket decodes as one dense batch with no padding
(exact RoPE positions, no attention masks); the G copies of a prompt always share a bucket. Each
bucket prefills once, then decodes one token per step through megatron's ``StaticInferenceContext``
until every row has stopped (EOS, ``</answer>``) or reached ``max_new_tokens``. Under TP the logits
are gathered and every TP rank draws the same sample from an identically seeded generator.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Sequence

import torch

from r1hpc.config import ConfigError
from r1hpc.rollout.sampling import sample_tokens


@dataclasses.dataclass
class RolloutConfig:
    """Sampling settings. R1's evaluation uses temperature 0.6, top-p 0.95; RL usually samples at 1.0."""

    group_size: int = 8
    prompts_per_step: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128
    max_batch_rows: int = 512  # rows decoded together; larger buckets are split

    def validate(self) -> None:
        if self.group_size < 1 or self.prompts_per_step < 1:
            raise ConfigError("group_size and prompts_per_step must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ConfigError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got "
                              f"{self.temperature}, {self.top_p}, {self.top_k}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclasses.dataclass
class Sample:
    """One response: token ids, per-token log-probs and entropies under the sampling temperature."""

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: torch.Tensor
    entropies: torch.Tensor
    truncated: bool  # hit max_new_tokens without a stop token


@torch.no_grad()
def generate(model: torch.nn.Module, prompts: Sequence[Sequence[int]], *, vocab_size: int, stop_ids: Sequence[int],
             temperature: float, top_p: float = 1.0, top_k: int = 0, max_new_tokens: int,
             max_seq_length: int, generator: torch.Generator | None = None, max_batch_rows: int = 512) -> list[Sample]:
    """Sample one response per entry of ``prompts`` (repeat a prompt G times for a group)."""
    from megatron.core import parallel_state

    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        raise NotImplementedError("rollout with pipeline parallelism > 1 is not supported; use TP/EP for the "
                                  "policy during rollout")
    from r1hpc.model.provider import sequence_parallel_off

    was_training = model.training
    model.eval()
    with sequence_parallel_off(model):
        results = _generate_all(model, prompts, vocab_size=vocab_size, stop_ids=stop_ids, temperature=temperature,
                                top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens,
                                max_seq_length=max_seq_length, generator=generator, max_batch_rows=max_batch_rows)
    model.train(was_training)
    return results


def _generate_all(model, prompts, *, vocab_size, stop_ids, temperature, top_p, top_k, max_new_tokens,
                  max_seq_length, generator, max_batch_rows) -> list[Sample]:
    buckets: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        buckets[len(p)].append(i)
    results: list[Sample | None] = [None] * len(prompts)
    for length in sorted(buckets):
        rows = buckets[length]
        for start in range(0, len(rows), max_batch_rows):
            chunk = rows[start:start + max_batch_rows]
            for i, s in zip(chunk, _generate_bucket(
                    model, [prompts[i] for i in chunk], vocab_size=vocab_size, stop_ids=stop_ids,
                    temperature=temperature, top_p=top_p, top_k=top_k,
                    max_new_tokens=min(max_new_tokens, max_seq_length - length), generator=generator)):
                results[i] = s
    return results  # type: ignore[return-value]


def _generate_bucket(model, prompts, *, vocab_size, stop_ids, temperature, top_p, top_k, max_new_tokens,
                     generator) -> list[Sample]:
    from megatron.core.inference.contexts import StaticInferenceContext

    from r1hpc.model.provider import causal_attention_mask

    device = next(model.parameters()).device
    batch, length = len(prompts), len(prompts[0])
    if max_new_tokens < 1:
        raise ConfigError(f"prompt of {length} tokens leaves no room to generate within model.max_seq_length")
    ctx = StaticInferenceContext(batch, length + max_new_tokens)
    tokens = torch.tensor(prompts, dtype=torch.long, device=device)
    positions = torch.arange(length, device=device)[None].expand(batch, -1)
    logits = model(tokens, positions, causal_attention_mask(length, device), inference_context=ctx,
                   runtime_gather_output=True)[:, -1]
    ctx.sequence_len_offset += length
    stop = torch.tensor(list(stop_ids), device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    out_tokens, out_logp, out_ent = [], [], []
    for step in range(max_new_tokens):
        logits = logits[:, :vocab_size]  # drop the TP padding of the vocabulary
        tok, logp, ent = sample_tokens(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                       generator=generator)
        out_tokens.append(tok.cpu())
        out_logp.append(logp.cpu())
        out_ent.append(ent.cpu())
        done |= torch.isin(tok, stop)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        pos = torch.full((batch, 1), length + step, device=device)
        logits = model(tok[:, None], pos, None, inference_context=ctx, runtime_gather_output=True)[:, -1]
        ctx.sequence_len_offset += 1
    toks, logps, ents = torch.stack(out_tokens, 1), torch.stack(out_logp, 1), torch.stack(out_ent, 1)
    stop_cpu = stop.cpu()
    samples = []
    for b in range(batch):
        hits = torch.isin(toks[b], stop_cpu).nonzero()
        n = int(hits[0]) + 1 if len(hits) else toks.shape[1]
        samples.append(Sample(list(prompts[b]), toks[b, :n].tolist(), logps[b, :n], ents[b, :n],
                              truncated=not len(hits)))
    return samples


def response_text(tok, sample: Sample) -> str:
    """The response as the reward functions see it: decoded, without the end-of-sequence token."""
    ids = sample.response_ids
    if ids and ids[-1] == tok.eos_id:
        ids = ids[:-1]
    return tok.decode(ids)
