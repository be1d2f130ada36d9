"""Rollouts on megatron-core's ``DynamicInferenceEngine``: continuous batching over a paged KV cache.

Each prompt is one engine request (its id is its index in ``prompts``). Every engine step runs the
prefills of newly admitted requests and one decode token of every running request in a single
forward pass; a request that stops frees its KV blocks at once and a waiting one takes its place,
so a long tail of responses costs only its own tokens. Tokens are drawn by r1hpc's sampler, not
megatron's: the same draw function as the static loop (:func:`r1hpc.rollout.generate.make_draw`),
keyed by request id and decode step, and the same per-token log-prob and entropy, so with the
compiled sampler both engines draw the same responses from the same logits. A MoE policy whose
routers carry replay instances records each fed token's experts (routing replay, R3) as the static
loop does. Under TP the logits are gathered and every rank draws the same tokens. The KV pool holds
``rollout.kv_cache_gb`` (by default: every request of the call at its full length, so nothing waits
for blocks) in blocks of ``rollout.kv_block_tokens`` (:func:`block_tokens_for`).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from megatron.core.inference.contexts import DynamicInferenceContext
from megatron.core.inference.text_generation_controllers.text_generation_controller import TextGenerationController

from r1hpc.config import ConfigError
from r1hpc.device import HOST
from r1hpc.model.routing_replay import RoutingRecorder
from r1hpc.rollout.cpu_context import UnpaddedContext
from r1hpc.rollout.generate import DrawFn, Sample, make_draw
from r1hpc.rollout.native import resolve_sampler

MIN_STEP_TOKENS = 16384  # megatron's default token budget of one forward pass (prefill chunk)


def block_tokens_for(device_type: str, configured: Optional[int] = None) -> int:
    """Tokens per KV block (``rollout.kv_block_tokens``, else the device's default). On a GPU megatron's
    default, 256: flash-attn's paged kernels need a multiple of 256. On a CPU 64: a short response
    wastes little of its block, and a request needs a new one (megatron pauses and resumes it for
    that) only every 64 tokens; 16, 64 and 128 timed within 3-5% of each other on the tiny MoE."""
    if configured is None:
        return 256 if device_type == "cuda" else 64
    if device_type == "cuda" and configured % 256:
        raise ConfigError(f"key 'rollout.kv_block_tokens' must be a multiple of 256 on a GPU (flash-attn's paged "
                          f"KV kernels), got {configured}")
    return configured


class _NoText:
    """The engine detokenizes finished requests for its own records; r1hpc decodes responses itself."""

    eod = -1

    def detokenize(self, ids, **kwargs) -> str:
        return ""


class DrawLog:
    """Each request's draws (token, log-prob, entropy) in draw order: one record of tensors per engine
    step rather than a Python append per request, sorted by request once at the end. Memory grows with
    the tokens drawn, not with requests x max_new_tokens (long chains of thought)."""

    def __init__(self, requests: int):
        self.count = torch.zeros(requests, dtype=torch.long, device=HOST)  # tokens each request has drawn
        self._steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def add(self, request_ids: torch.Tensor, tokens: torch.Tensor, logps: torch.Tensor, ents: torch.Tensor) -> None:
        self._steps.append((request_ids, tokens.to(HOST), logps.float().to(HOST), ents.float().to(HOST)))
        self.count[request_ids] += 1  # an engine step holds each request once

    def samples(self, prompts: Sequence[Sequence[int]], stop: torch.Tensor) -> list[Sample]:
        """One Sample per request, cut after its first stop token (as the static loop does)."""
        ids, tokens, logps, ents = (torch.cat(column) for column in zip(*self._steps))
        order = torch.sort(ids, stable=True).indices  # by request; a request's draws stay in step order
        tokens, logps, ents = tokens[order], logps[order], ents[order]
        hits = torch.isin(tokens, stop)
        out, start = [], 0
        for prompt, drawn in zip(prompts, self.count.tolist()):
            first = hits[start:start + drawn].nonzero()
            n = int(first[0]) + 1 if len(first) else drawn
            out.append(Sample(list(prompt), tokens[start:start + n].tolist(), logps[start:start + n].clone(),
                              ents[start:start + n].clone(), truncated=not len(first)))
            start += drawn
        return out


class R1SamplingController(TextGenerationController):
    """megatron's text generation controller with its sampling step replaced by r1hpc's draw.

    Per step: the last-token logits of the active requests, their request ids and each request's
    decode step (tokens it has drawn so far) go to ``draw``; a request that draws a stop token gets
    that token as its termination id, so the engine's own bookkeeping finishes it this step."""

    def __init__(self, wrapped_model, *, draw: DrawFn, vocab_size: int, stop_ids: Sequence[int], log: DrawLog,
                 recorder: Optional[RoutingRecorder] = None):
        super().__init__(wrapped_model, _NoText())
        self.draw, self.vocab_size, self.log, self.recorder = draw, vocab_size, log, recorder
        self.stop = torch.tensor(list(stop_ids), dtype=torch.long, device=HOST)

    def _dynamic_step_sample_bookkeeping(self) -> None:
        pass  # megatron buckets its own sampling parameters here; r1hpc's draw needs none

    def _dynamic_step_log_probs_bookkeeping(self) -> tuple[bool, bool]:
        return False, False  # log-probs and entropies come from the draw

    def _dynamic_step_sample_logits(self, logits: torch.Tensor) -> None:
        ctx = self.inference_wrapped_model.inference_context
        if self.recorder is not None:  # routing replay (R3): the step's experts, by request and position
            n = ctx.active_token_count
            self.recorder.scatter(ctx.request_ids[ctx.token_to_request_idx[:n].long()].long(),
                                  ctx.token_to_position_in_request[:n].long(), ctx.padded_active_token_count)
        rows = slice(ctx.paused_request_count, ctx.total_request_count)
        request_ids = ctx.request_ids[rows].long().to(HOST)
        last = logits.squeeze(0)[:, :self.vocab_size]  # [active requests, V]; drops the TP vocab padding
        tokens, logps, ents = self._draw_by_step(last, request_ids, self.log.count[request_ids])
        self.log.add(request_ids, tokens, logps, ents)
        hit = torch.isin(tokens, self.stop.to(tokens.device))
        if hit.any():
            ctx.request_metadata["termination_id"][rows][hit] = tokens[hit]
        self._sampled_tokens_cuda[:len(tokens)] = tokens

    def _draw_by_step(self, last: torch.Tensor, request_ids: torch.Tensor, steps: torch.Tensor):
        """(tokens, log-probs, entropies) of the rows of ``last``, each drawn at its request's decode step:
        one draw of all rows when they share a step (no copy of the logits), else one per step."""
        first, final = torch.aminmax(steps)
        if first == final:
            return self.draw(last, request_ids, int(first))
        tokens = torch.empty(len(steps), dtype=torch.long, device=last.device)
        logps, ents = torch.empty(len(steps), device=HOST), torch.empty(len(steps), device=HOST)
        for step in steps.unique().tolist():  # requests that joined later are at earlier steps
            sel = (steps == step).nonzero().squeeze(1)
            tok, logp, ent = self.draw(last[sel.to(last.device)], request_ids[sel], step)
            tokens[sel.to(tokens.device)], logps[sel], ents[sel] = tok, logp.float().cpu(), ent.float().cpu()
        return tokens, logps, ents


@torch.no_grad()
def generate_dynamic(model: torch.nn.Module, prompts: Sequence[Sequence[int]], *, vocab_size: int,
                     stop_ids: Sequence[int], temperature: float, top_p: float = 1.0, top_k: int = 0,
                     max_new_tokens: int, max_seq_length: int, generator: torch.Generator | None = None,
                     max_batch_rows: int = 512, sampler: str = "auto",
                     kv_cache_gb: Optional[float] = None, kv_block_tokens: Optional[int] = None) -> list[Sample]:
    """:func:`r1hpc.rollout.generate.generate` on the dynamic engine (same arguments and samples).

    ``max_batch_rows``: requests decoded together (the engine's ``max_requests``); ``kv_cache_gb``:
    the KV pool (None: every request at full length), in blocks of ``kv_block_tokens`` (None: the
    device's default, :func:`block_tokens_for`). Each request generates up to
    ``min(max_new_tokens, max_seq_length - its prompt length)`` tokens."""
    from r1hpc.model.cpu_linear import packed_linear_weights
    from r1hpc.model.mcore_compat import inference_mode
    from r1hpc.model.provider import sequence_parallel_off

    _check_parallelism()
    budgets = _budgets(prompts, max_new_tokens, max_seq_length)
    device_type = next(model.parameters()).device.type
    block_tokens = block_tokens_for(device_type, kv_block_tokens)
    if not prompts:
        return []
    was_training = model.training
    model.eval()
    draw = make_draw(resolve_sampler(sampler, device_type), generator,
                     temperature=temperature, top_k=top_k, top_p=top_p)
    recorder = RoutingRecorder.start(model, len(prompts), max(len(p) + n for p, n in zip(prompts, budgets)))
    try:
        with sequence_parallel_off(model), inference_mode(), packed_linear_weights(model):
            engine = _build_engine(model, prompts, budgets, draw=draw, vocab_size=vocab_size, stop_ids=stop_ids,
                                   max_seq_length=max_seq_length, max_batch_rows=max_batch_rows,
                                   kv_cache_gb=kv_cache_gb, block_tokens=block_tokens, recorder=recorder)
            log = _run(engine, prompts, budgets)
    finally:
        model.train(was_training)
        if recorder:
            recorder.stop()
    samples = log.samples(prompts, engine.controller.stop)
    if recorder:  # the positions the trainer feeds: the prompt and every response token but the last
        for i, s in enumerate(samples):
            s.routing = recorder.take(i, 0, len(s.prompt_ids) + len(s.response_ids) - 1)
    return samples


def _check_parallelism() -> None:
    from megatron.core import parallel_state as ps

    if ps.get_pipeline_model_parallel_world_size() > 1:
        raise NotImplementedError("rollout with pipeline parallelism > 1 is not supported; use TP/EP for the "
                                  "policy during rollout")
    if ps.get_expert_model_parallel_world_size() > 1 and ps.get_data_parallel_world_size() > 1:
        raise NotImplementedError("rollout.engine=dynamic with expert parallelism across data-parallel ranks "
                                  "(their requests differ, so their engine steps do not line up); use "
                                  "rollout.engine=static")


def _budgets(prompts: Sequence[Sequence[int]], max_new_tokens: int, max_seq_length: int) -> list[int]:
    """Tokens each request may generate: ``max_new_tokens``, less where the prompt leaves no room."""
    budgets = [min(max_new_tokens, max_seq_length - len(p)) for p in prompts]
    for i, (p, n) in enumerate(zip(prompts, budgets)):
        if not p:
            raise ValueError(f"prompt {i} is empty")
        if n < 1:
            raise ConfigError(f"prompt {i} has {len(p)} tokens and leaves no room to generate within "
                              f"model.max_seq_length ({max_seq_length})")
    return budgets


def _build_engine(model, prompts, budgets, *, draw: DrawFn, vocab_size: int, stop_ids, max_seq_length: int,
                  max_batch_rows: int, kv_cache_gb: Optional[float], block_tokens: int,
                  recorder: Optional[RoutingRecorder]):
    from megatron.core.inference.engines import DynamicInferenceEngine
    from megatron.core.inference.model_inference_wrappers.gpt.gpt_inference_wrapper import GPTInferenceWrapper
    from megatron.core.inference.model_inference_wrappers.inference_wrapper_config import InferenceWrapperConfig

    config = model.config
    rows = max(1, min(max_batch_rows, len(prompts)))
    context = _build_context(model, prompts, budgets, rows=rows, max_seq_length=max_seq_length,
                             kv_cache_gb=kv_cache_gb, block_tokens=block_tokens)
    wrapper_config = InferenceWrapperConfig(hidden_size=config.hidden_size, params_dtype=config.params_dtype,
                                            inference_batch_times_seqlen_threshold=-1,
                                            padded_vocab_size=model.vocab_size, inference_max_requests=rows,
                                            inference_max_seq_length=max_seq_length)
    wrapped = GPTInferenceWrapper(model, wrapper_config, context)
    controller = R1SamplingController(wrapped, draw=draw, vocab_size=vocab_size, stop_ids=stop_ids,
                                      log=DrawLog(len(prompts)), recorder=recorder)
    return DynamicInferenceEngine(controller, context, random_seed=0, enable_chunked_prefill=False)


def _build_context(model, prompts, budgets, *, rows: int, max_seq_length: int, kv_cache_gb: Optional[float],
                   block_tokens: int):
    """The paged KV pool and the engine's per-step limits."""
    cls = UnpaddedContext if next(model.parameters()).device.type == "cpu" else DynamicInferenceContext
    config = model.config
    kv_heads = config.num_query_groups or config.num_attention_heads
    block_bytes = (config.params_dtype.itemsize * 2 * config.num_layers * block_tokens * config.kv_channels
                   * kv_heads // config.tensor_model_parallel_size)
    need = sorted((math.ceil((len(p) + n) / block_tokens) for p, n in zip(prompts, budgets)), reverse=True)
    blocks = _pool_blocks(need, rows, block_tokens, block_bytes, kv_cache_gb)
    step_tokens = max(MIN_STEP_TOKENS, rows, max(len(p) for p in prompts))
    return cls(params_dtype=config.params_dtype, num_layers=config.num_layers, kv_channels=config.kv_channels,
               num_attention_heads=kv_heads, max_sequence_length=max_seq_length,
               buffer_size_gb=(blocks + 1) * block_bytes / 1024**3, max_requests=rows,
               max_tokens=cls.round_up_tokens(step_tokens), block_size_tokens=block_tokens,
               materialize_only_last_token_logits=True, use_cuda_graphs_for_non_decode_steps=False)


def _pool_blocks(need: list[int], rows: int, block_tokens: int, block_bytes: int, kv_cache_gb: Optional[float]) -> int:
    """KV blocks to allocate (plus megatron's one dummy block). ``need``: each request's blocks at full
    length, largest first. A request larger than the whole pool would wait forever: refuse it here."""
    if kv_cache_gb is None:
        return sum(need[:rows]) + 1
    blocks = int(kv_cache_gb * 1024**3) // block_bytes
    if blocks - 1 < need[0]:
        raise ConfigError(
            f"rollout.kv_cache_gb={kv_cache_gb} holds {max(blocks - 1, 0) * block_tokens} KV tokens per rank, but a "
            f"request needs {need[0] * block_tokens} (prompt + max_new_tokens, in blocks of {block_tokens}); "
            f"raise rollout.kv_cache_gb to at least {(need[0] + 2) * block_bytes / 1024**3:.3g} or leave it unset")
    return blocks - 1


def _run(engine, prompts, budgets) -> DrawLog:
    """Add every prompt as a request and step the engine until all have finished."""
    from megatron.core.inference.inference_request import Status
    from megatron.core.inference.sampling_params import SamplingParams

    for i, (p, n) in enumerate(zip(prompts, budgets)):
        engine.add_request(i, list(p), SamplingParams(num_tokens_to_generate=n, termination_id=-1))
    while engine.has_unfinished_requests():
        for record in _step(engine)["finished_request_records"]:
            if record[-1].status == Status.FAILED:  # _budgets and _pool_blocks refuse what megatron would
                raise RuntimeError(f"the dynamic engine refused request {record.request_id}: {record[-1].events}")
    return engine.controller.log


def _step(engine) -> dict:
    """One engine step. While requests wait and a slot is free, ``engine.step_modern()``: admitting a
    request schedules a notification task on the engine's event loop. Otherwise without the loop: the step's coroutine then
    only yields to let other tasks run (``asyncio.sleep(0)``) and there are none, so it is run to its
    end directly (the loop's turns cost ~0.1 ms a step, a few percent of a small model's decode step)."""
    context = engine.context
    if engine.waiting_request_ids and context.total_request_count < context.max_requests:  # one may be admitted
        return engine.step_modern()
    step = engine.async_step()
    try:
        while True:
            if step.send(None) is not None:  # awaited a future: the loop must run it
                step.close()
                raise RuntimeError("the dynamic engine's step awaited a future outside its event loop")
    except StopIteration as done:
        return done.value
