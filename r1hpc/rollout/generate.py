"""Rollout: G responses per prompt from the current policy, with megatron's KV cache.

Prompts of any lengths decode together: left-padded, with the pad keys masked. Each batch prefills
once, then decodes one token per step through megatron's ``StaticInferenceContext`` until every
row has stopped (EOS, ``</answer>``) or reached ``max_new_tokens``. Under TP the logits
are gathered and every TP rank draws the same sample from an identically seeded generator.

Tokens are drawn by the compiled sampler (csrc/, keyed by seed, request index and step) when it is
built, by the torch reference otherwise: ``rollout.sampler`` (auto | torch | native).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Literal, Optional, Sequence

import torch

from r1hpc.config import ConfigError
from r1hpc.device import HOST
from r1hpc.model.routing_replay import RoutingRecorder
from r1hpc.rollout.native import local_device_type, resolve_sampler, sample_tokens_native, seed_from
from r1hpc.rollout.sampling import sample_tokens

# (logits [b, V], request ids [b], decode step) -> (tokens, logprobs, entropies)
DrawFn = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


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
    # auto: the compiled sampler (csrc/) when built, else torch; native: require it; torch: the reference
    sampler: Literal["auto", "torch", "native"] = "auto"
    # static: r1hpc's decoding loop over megatron's StaticInferenceContext; dynamic: megatron's
    # DynamicInferenceEngine (continuous batching, paged KV cache; r1hpc.rollout.dynamic)
    engine: Literal["static", "dynamic"] = "static"
    kv_cache_gb: Optional[float] = None  # dynamic engine's KV pool per rank; None: every row at full length
    # dynamic engine's tokens per KV block; None: 256 on a GPU (flash-attn's paged kernels need a
    # multiple of 256), 64 on a CPU (r1hpc.rollout.dynamic.block_tokens_for)
    kv_block_tokens: Optional[int] = None
    # GPU, colocated: optimizer state and grad buffers go to host memory while the rollout runs
    offload_train_state: bool = False

    def validate(self) -> None:
        if self.group_size < 1 or self.prompts_per_step < 1:
            raise ConfigError("group_size and prompts_per_step must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ConfigError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got "
                              f"{self.temperature}, {self.top_p}, {self.top_k}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        resolve_sampler(self.sampler, local_device_type())  # 'native' without the extension: say so now
        check_engine(self.engine)
        if self.kv_cache_gb is not None and not self.kv_cache_gb > 0:
            raise ConfigError(f"key 'kv_cache_gb' must be positive or null, got {self.kv_cache_gb}")
        if self.kv_block_tokens is not None and not self.kv_block_tokens >= 1:
            raise ConfigError(f"key 'kv_block_tokens' must be >= 1 or null, got {self.kv_block_tokens}")


@dataclasses.dataclass
class Sample:
    """One response: token ids, per-token log-probs and entropies under the sampling temperature."""

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: torch.Tensor
    entropies: torch.Tensor
    truncated: bool  # hit max_new_tokens without a stop token
    # MoE experts per fed position (prompt + response[:-1]), layer and top-k slot: [P + R - 1, layers, k]
    # int16, recorded when the routers carry replay instances (r1hpc.model.routing_replay)
    routing: Optional[torch.Tensor] = None


def check_engine(engine: str) -> None:
    """A config's ``engine`` key (rollout.engine, eval.engine) names one of the two decoders."""
    if engine not in ("static", "dynamic"):
        raise ConfigError(f"key 'engine' must be static or dynamic, got {engine!r}")


@torch.no_grad()
def generate(model: torch.nn.Module, prompts: Sequence[Sequence[int]], *, vocab_size: int, stop_ids: Sequence[int],
             temperature: float, top_p: float = 1.0, top_k: int = 0, max_new_tokens: int,
             max_seq_length: int, generator: torch.Generator | None = None, max_batch_rows: int = 512,
             sampler: str = "auto") -> list[Sample]:
    """Sample one response per entry of ``prompts`` (repeat a prompt G times for a group).

    ``sampler`` as ``rollout.sampler``. The native path keys each prompt's draws by its index in
    ``prompts``, so its samples do not depend on which other prompts share the call."""
    from megatron.core import parallel_state

    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        raise NotImplementedError("rollout with pipeline parallelism > 1 is not supported; use TP/EP for the "
                                  "policy during rollout")
    from r1hpc.model.cpu_linear import packed_linear_weights
    from r1hpc.model.mcore_compat import inference_mode
    from r1hpc.model.provider import sequence_parallel_off

    was_training = model.training
    model.eval()
    draw = make_draw(resolve_sampler(sampler, next(model.parameters()).device.type), generator,
                    temperature=temperature, top_k=top_k, top_p=top_p)
    # inference_mode: last-token-only prefill logits; packed_linear_weights: decode's CPU products
    with sequence_parallel_off(model), inference_mode(), packed_linear_weights(model):
        results = _generate_all(model, prompts, vocab_size=vocab_size, stop_ids=stop_ids, draw=draw,
                                max_new_tokens=max_new_tokens, max_seq_length=max_seq_length,
                                max_batch_rows=max_batch_rows)
    model.train(was_training)
    return results


def make_draw(path: str, generator: torch.Generator | None, *, temperature: float, top_k: int,
             top_p: float) -> DrawFn:
    """The per-step sampler: the torch reference (one generator stream for the whole batch) or the
    compiled one (a Philox key drawn once from ``generator``, counters per request and step)."""
    if path == "torch":
        return lambda logits, request_ids, step: sample_tokens(logits, temperature=temperature, top_k=top_k,
                                                               top_p=top_p, generator=generator)
    seed = seed_from(generator)
    return lambda logits, request_ids, step: sample_tokens_native(
        logits, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, request_ids=request_ids, step=step)


def _generate_all(model, prompts, *, vocab_size, stop_ids, draw: DrawFn, max_new_tokens, max_seq_length,
                  max_batch_rows) -> list[Sample]:
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    results: list[Sample | None] = [None] * len(prompts)
    for start in range(0, len(order), max_batch_rows):
        chunk = order[start:start + max_batch_rows]
        longest = len(prompts[chunk[-1]])
        for i, s in zip(chunk, _generate_batch(
                model, [prompts[i] for i in chunk], torch.tensor(chunk, dtype=torch.long, device=HOST), vocab_size=vocab_size,
                stop_ids=stop_ids, draw=draw, max_new_tokens=min(max_new_tokens, max_seq_length - longest))):
            results[i] = s
    return results  # type: ignore[return-value]


def _generate_batch(model, prompts, request_ids: torch.Tensor, *, vocab_size, stop_ids, draw: DrawFn,
                    max_new_tokens) -> list[Sample]:
    """Left-pad the prompts, mask the pad keys, prefill once and decode until every row stopped.
    ``request_ids`` are the prompts' indices in the caller's list (the native sampler's counters).

    RoPE depends only on the distance between query and key, and every real token of a row is
    shifted by the same pad count, so the padded batch computes what each prompt alone would. Rows
    with the same prompt (a GRPO group) share its prefill: G times fewer prefill FLOPs."""
    from megatron.core.inference.contexts import StaticInferenceContext

    device = next(model.parameters()).device
    batch, length = len(prompts), max(len(p) for p in prompts)
    if max_new_tokens < 1:
        raise ConfigError(f"a prompt of {length} tokens leaves no room to generate within model.max_seq_length")
    pads = torch.tensor([length - len(p) for p in prompts], device=device)
    tokens = torch.zeros((batch, length), dtype=torch.long, device=device)
    for b, p in enumerate(prompts):
        tokens[b, length - len(p):] = torch.tensor(p, dtype=torch.long, device=device)
    # True = masked: keys that are padding, and (in the prefill) keys in the future
    pad_keys = torch.arange(length + max_new_tokens, device=device)[None] < pads[:, None]  # [b, L + new]
    prefill_mask = torch.triu(torch.ones(length, length, dtype=torch.bool, device=device), 1)[None, None]
    prefill_mask = prefill_mask | pad_keys[:, None, None, :length]
    positions = (torch.arange(length, device=device)[None] - pads[:, None]).clamp(min=0)
    ctx = StaticInferenceContext(batch, length + max_new_tokens)
    recorder = RoutingRecorder.start(model, batch, length + max_new_tokens)  # routing replay (R3)
    logits, copy_of = _prefill(model, prompts, tokens, positions, prefill_mask, ctx)
    if recorder:
        recorder.prefill(length, copy_of)
    ctx.sequence_len_offset += length
    stop = torch.tensor(list(stop_ids), device=device)
    # the samples' tokens, log-probs and entropies are collected on the host, as Sample holds them
    toks = torch.zeros((batch, max_new_tokens), dtype=torch.long, device=HOST)
    logps, ents = torch.zeros((batch, max_new_tokens), device=HOST), torch.zeros((batch, max_new_tokens), device=HOST)
    done = torch.zeros(batch, dtype=torch.bool, device=HOST)
    active = torch.arange(batch, device=HOST)  # original rows still decoding, in KV-cache row order
    for step in range(max_new_tokens):
        # [:, :vocab_size] drops the TP vocab padding
        tok, logp, ent = draw(logits[:, :vocab_size], request_ids[active], step)
        toks[active, step], logps[active, step], ents[active, step] = tok.cpu(), logp.cpu(), ent.cpu()
        done[active] |= torch.isin(tok, stop).cpu()
        running = ~done[active]
        if not bool(running.any()) or step == max_new_tokens - 1:
            break
        if int(running.sum()) <= 0.75 * len(active):  # long tail: drop finished rows from the batch
            keep = running.nonzero().squeeze(1)
            _copy_kv_cache_rows(ctx, keep.to(device))
            active, tok = active[keep], tok[keep.to(device)]
        rows = active.to(device)
        logits = model(tok[:, None], positions[rows, -1:] + step + 1, pad_keys[rows, None, None, :length + step + 1],
                       inference_context=ctx, runtime_gather_output=True)[:, -1]
        if recorder:
            recorder.decode(active, length + step)
        ctx.sequence_len_offset += 1
    samples = _samples(prompts, toks[:, :step + 1], logps, ents, stop.cpu(), recorder, pads.tolist(), length)
    if recorder:
        recorder.stop()
    return samples


def _samples(prompts, toks: torch.Tensor, logps, ents, stop: torch.Tensor, recorder: Optional[RoutingRecorder],
             pads: list[int], length: int) -> list[Sample]:
    """Each row cut after its first stop token (or at the last decoded step: truncated)."""
    samples = []
    for b in range(len(prompts)):
        hits = torch.isin(toks[b], stop).nonzero()
        n = int(hits[0]) + 1 if len(hits) else toks.shape[1]
        samples.append(Sample(list(prompts[b]), toks[b, :n].tolist(), logps[b, :n].clone(), ents[b, :n].clone(),
                              truncated=not len(hits),
                              routing=recorder.take(b, pads[b], length + n - 1) if recorder else None))
    return samples


def _prefill(model, prompts, tokens, positions, mask, ctx) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts' last logits [b, V] after the prefill, and per row the prefilled row it copies: a
    group's G rows share its prompt, so each distinct prompt is prefilled once and its KV-cache row
    copied to the others."""
    distinct, copy_of = _distinct_prompts(prompts)
    if len(distinct) == len(prompts):
        return model(tokens, positions, mask, inference_context=ctx, runtime_gather_output=True)[:, -1], copy_of
    rows, fan_out = torch.tensor(distinct, device=tokens.device), copy_of.to(tokens.device)
    logits = model(tokens[rows], positions[rows], mask[rows], inference_context=ctx,
                   runtime_gather_output=True)[:, -1]
    _copy_kv_cache_rows(ctx, fan_out)
    return logits[fan_out], copy_of


def _distinct_prompts(prompts) -> tuple[list[int], torch.Tensor]:
    """The first row of each distinct prompt, and for every row the position of its prompt among
    those (a host tensor): what a prefill of the distinct prompts alone gives each row."""
    position: dict[tuple[int, ...], int] = {}  # prompt -> its position among the distinct ones
    distinct, copy_of = [], []
    for row, prompt in enumerate(prompts):
        if tuple(prompt) not in position:
            position[tuple(prompt)] = len(distinct)
            distinct.append(row)
        copy_of.append(position[tuple(prompt)])
    return distinct, torch.tensor(copy_of, dtype=torch.long, device=HOST)


def _copy_kv_cache_rows(ctx, source: torch.Tensor) -> None:
    """Row ``i`` of each layer's KV cache becomes (a copy of) row ``source[i]``: with ``keep``, the rows
    still decoding move to the front (megatron's static context serves a decode batch of b rows from
    the first b rows of its [seq, batch, heads, dim] memory); with a prompt's row per request, the
    prefill of the distinct prompts fans out to every row."""
    n = len(source)
    for layer, (k_mem, v_mem) in ctx.key_value_memory_dict.items():
        k_mem[:, :n] = k_mem[:, source]
        v_mem[:, :n] = v_mem[:, source]


def response_text(tok, sample: Sample) -> str:
    """The response as the reward functions see it: decoded, without the end-of-sequence token."""
    ids = sample.response_ids
    if ids and ids[-1] == tok.eos_id:
        ids = ids[:-1]
    return tok.decode(ids)
