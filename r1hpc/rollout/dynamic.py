"""Rollouts on megatron-core's ``DynamicInferenceEngine``: continuous batching over a paged KV cache.

Each prompt is one engine request (its id is its index in ``prompts``). Every engine step runs the
prefills of newly admitted requests and one decode token of every running request in a single
forward pass; a request that stops frees its KV blocks at once and a waiting one takes its place,
so a long tail of responses costs only its own tokens. Tokens are drawn by r1hpc's sampler, not
megatron's: the same draw function as the static loop (:func:`r1hpc.rollout.generate.make_draw`),
keyed by request id and decode step, and the same per-token log-prob and entropy, so with the
compiled sampler both engines draw the same responses from the same logits. A MoE policy whose
routers carry replay instances records each fed token's experts (routing replay, R3) as the static
loop does. Under TP the logits are gathered and every rank draws the same tokens. The KV pool holds ``rollout.kv_cache_gb``
(by default: every request of the call at its full length, so nothing waits for blocks).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from megatron.core.inference.contexts import DynamicInferenceContext
from megatron.core.inference.text_generation_controllers.text_generation_controller import TextGenerationController

from r1hpc.config import ConfigError
from r1hpc.device import HOST
from r1hpc.model.rope import rope_table, rotate, unfused_bshd
from r1hpc.model.routing_replay import RoutingRecorder
from r1hpc.rollout.generate import DrawFn, Sample, make_draw
from r1hpc.rollout.native import resolve_sampler

BLOCK_TOKENS = 16  # KV block size: small blocks waste little on short responses; SDPA gathers them per step
MIN_STEP_TOKENS = 16384  # megatron's default token budget of one forward pass (prefill chunk)


class _NoText:
    """The engine detokenizes finished requests for its own records; r1hpc decodes responses itself."""

    eod = -1

    def detokenize(self, ids, **kwargs) -> str:
        return ""


class UnpaddedContext(DynamicInferenceContext):
    """The engine's context on a CPU. Forward passes of exactly the active tokens (rounded to the TP
    size) instead of a multiple of 64: that padding serves CUDA graphs; on a CPU it is only extra work.
    RoPE's cos/sin tables for the step's positions are computed once per forward pass and shared by
    every layer (megatron recomputes them in each layer for the queries and again for the keys);
    the rotation itself is megatron's unfused formula, so the results are bit for bit the same."""

    TOKEN_ROUNDER = 1

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._rope_tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def initialize_attention_state(self, **kwargs) -> None:
        super().initialize_attention_state(**kwargs)  # once per forward pass: new positions
        self._rope_tables.clear()

    def apply_rotary_emb_query(self, query, query_emb, config, cu_seqlens_q, cp_group, mscale: float = 1.0):
        if cu_seqlens_q is not None or not unfused_bshd(config):
            return super().apply_rotary_emb_query(query, query_emb, config, cu_seqlens_q, cp_group, mscale)
        n = self.padded_active_token_count
        query[:n] = self._rotate(query[:n], query_emb, self.token_to_pos_ids[:n], config, mscale)
        return query

    def apply_rotary_emb_key(self, key, key_emb, config, cp_group, mscale: float = 1.0):
        if not unfused_bshd(config):
            return super().apply_rotary_emb_key(key, key_emb, config, cp_group, mscale)
        n = self.padded_active_token_count
        rotated = self._rotate(key[:n], key_emb, self.token_to_position_in_request[:n], config, mscale)
        if self.is_decode_only():  # as megatron: a decode step's keys are returned, a prefill's written back
            return rotated
        key[:n] = rotated
        return key

    def _rotate(self, t: torch.Tensor, emb: torch.Tensor, positions: torch.Tensor, config, mscale: float):
        """megatron's ``_apply_rotary_pos_emb_bshd`` with the step's cos/sin tables cached."""
        table = (emb.data_ptr(), positions.data_ptr(), mscale, t.dtype)
        if table not in self._rope_tables:
            self._rope_tables[table] = rope_table(emb[positions], mscale, t.dtype)
        return rotate(t, *self._rope_tables[table], config.rotary_interleaved)


class R1SamplingController(TextGenerationController):
    """megatron's text generation controller with its sampling step replaced by r1hpc's draw.

    Per step: the last-token logits of the active requests, their request ids and each request's
    decode step (tokens it has drawn so far) go to ``draw``; a request that draws a stop token gets
    that token as its termination id, so the engine's own bookkeeping finishes it this step."""

    def __init__(self, wrapped_model, *, draw: DrawFn, vocab_size: int, stop_ids: Sequence[int],
                 recorder: Optional[RoutingRecorder] = None):
        super().__init__(wrapped_model, _NoText())
        self.draw, self.vocab_size, self.recorder = draw, vocab_size, recorder
        self.stop = torch.tensor(list(stop_ids), dtype=torch.long, device=HOST)
        self.drawn: dict[int, list[tuple[int, float, float]]] = {}  # request id -> (token, logp, entropy) per step

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
        request_ids = ctx.request_ids[rows].long()
        last = logits.squeeze(0)[:, :self.vocab_size]  # [active requests, V]; drops the TP vocab padding
        steps = torch.tensor([len(self.drawn.setdefault(i, [])) for i in request_ids.tolist()], device=HOST)
        tokens, logps, ents = self._draw_by_step(last, request_ids, steps)
        for i, t, lp, e in zip(request_ids.tolist(), tokens.tolist(), logps.tolist(), ents.tolist()):
            self.drawn[i].append((t, lp, e))
        hit = torch.isin(tokens, self.stop.to(tokens.device))
        ctx.request_metadata["termination_id"][rows][hit] = tokens[hit]
        self._sampled_tokens_cuda[:len(steps)] = tokens

    def _draw_by_step(self, last: torch.Tensor, request_ids: torch.Tensor, steps: torch.Tensor):
        """(tokens, log-probs, entropies) of the rows of ``last``, each drawn at its request's decode step:
        one draw of all rows when they share a step (no copy of the logits), else one per step."""
        distinct = steps.unique().tolist()
        if len(distinct) == 1:
            tokens, logps, ents = self.draw(last, request_ids, distinct[0])
            return tokens, logps.float().cpu(), ents.float().cpu()
        tokens = torch.empty(len(steps), dtype=torch.long, device=last.device)
        logps, ents = torch.empty(len(steps), device=HOST), torch.empty(len(steps), device=HOST)
        for step in distinct:  # requests that joined later are at earlier steps
            sel = (steps == step).nonzero().squeeze(1)
            tok, logp, ent = self.draw(last[sel.to(last.device)], request_ids[sel.to(request_ids.device)], step)
            tokens[sel.to(tokens.device)], logps[sel], ents[sel] = tok, logp.float().cpu(), ent.float().cpu()
        return tokens, logps, ents


@torch.no_grad()
def generate_dynamic(model: torch.nn.Module, prompts: Sequence[Sequence[int]], *, vocab_size: int,
                     stop_ids: Sequence[int], temperature: float, top_p: float = 1.0, top_k: int = 0,
                     max_new_tokens: int, max_seq_length: int, generator: torch.Generator | None = None,
                     max_batch_rows: int = 512, sampler: str = "auto",
                     kv_cache_gb: Optional[float] = None) -> list[Sample]:
    """:func:`r1hpc.rollout.generate.generate` on the dynamic engine (same arguments and samples).

    ``max_batch_rows``: requests decoded together (the engine's ``max_requests``); ``kv_cache_gb``:
    the KV pool (None: every request at full length). Each request generates up to
    ``min(max_new_tokens, max_seq_length - its prompt length)`` tokens."""
    from r1hpc.model.cpu_linear import packed_linear_weights
    from r1hpc.model.mcore_compat import inference_mode
    from r1hpc.model.provider import sequence_parallel_off

    _check_parallelism()
    budgets = _budgets(prompts, max_new_tokens, max_seq_length)
    if not prompts:
        return []
    was_training = model.training
    model.eval()
    draw = make_draw(resolve_sampler(sampler, next(model.parameters()).device.type), generator,
                     temperature=temperature, top_k=top_k, top_p=top_p)
    recorder = RoutingRecorder.start(model, len(prompts), max(len(p) + n for p, n in zip(prompts, budgets)))
    try:
        with sequence_parallel_off(model), inference_mode(), packed_linear_weights(model):
            engine = _build_engine(model, prompts, budgets, draw=draw, vocab_size=vocab_size, stop_ids=stop_ids,
                                   max_seq_length=max_seq_length, max_batch_rows=max_batch_rows,
                                   kv_cache_gb=kv_cache_gb, recorder=recorder)
            drawn = _run(engine, prompts, budgets)
    finally:
        model.train(was_training)
        if recorder:
            recorder.stop()
    samples = [_sample(p, drawn[i], stop_ids) for i, p in enumerate(prompts)]
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
                  max_batch_rows: int, kv_cache_gb: Optional[float], recorder: Optional[RoutingRecorder]):
    from megatron.core.inference.engines import DynamicInferenceEngine
    from megatron.core.inference.model_inference_wrappers.gpt.gpt_inference_wrapper import GPTInferenceWrapper
    from megatron.core.inference.model_inference_wrappers.inference_wrapper_config import InferenceWrapperConfig

    config = model.config
    rows = max(1, min(max_batch_rows, len(prompts)))
    context = _build_context(model, prompts, budgets, rows=rows, max_seq_length=max_seq_length,
                             kv_cache_gb=kv_cache_gb)
    wrapper_config = InferenceWrapperConfig(hidden_size=config.hidden_size, params_dtype=config.params_dtype,
                                            inference_batch_times_seqlen_threshold=-1,
                                            padded_vocab_size=model.vocab_size, inference_max_requests=rows,
                                            inference_max_seq_length=max_seq_length)
    wrapped = GPTInferenceWrapper(model, wrapper_config, context)
    controller = R1SamplingController(wrapped, draw=draw, vocab_size=vocab_size, stop_ids=stop_ids,
                                      recorder=recorder)
    return DynamicInferenceEngine(controller, context, random_seed=0, enable_chunked_prefill=False)


def _build_context(model, prompts, budgets, *, rows: int, max_seq_length: int, kv_cache_gb: Optional[float]):
    """The paged KV pool and the engine's per-step limits."""
    cls = DynamicInferenceContext if torch.cuda.is_available() else UnpaddedContext
    config = model.config
    kv_heads = config.num_query_groups or config.num_attention_heads
    block_bytes = (config.params_dtype.itemsize * 2 * config.num_layers * BLOCK_TOKENS * config.kv_channels
                   * kv_heads // config.tensor_model_parallel_size)
    need = sorted((math.ceil((len(p) + n) / BLOCK_TOKENS) for p, n in zip(prompts, budgets)), reverse=True)
    blocks = _pool_blocks(need, rows, block_bytes, kv_cache_gb)
    step_tokens = max(MIN_STEP_TOKENS, rows, max(len(p) for p in prompts))
    return cls(params_dtype=config.params_dtype, num_layers=config.num_layers, kv_channels=config.kv_channels,
               num_attention_heads=kv_heads, max_sequence_length=max_seq_length,
               buffer_size_gb=(blocks + 1) * block_bytes / 1024**3, max_requests=rows,
               max_tokens=cls.round_up_tokens(step_tokens), block_size_tokens=BLOCK_TOKENS,
               materialize_only_last_token_logits=True, use_cuda_graphs_for_non_decode_steps=False)


def _pool_blocks(need: list[int], rows: int, block_bytes: int, kv_cache_gb: Optional[float]) -> int:
    """KV blocks to allocate (plus megatron's one dummy block). ``need``: each request's blocks at full
    length, largest first. A request larger than the whole pool would wait forever: refuse it here."""
    if kv_cache_gb is None:
        return sum(need[:rows]) + 1
    blocks = int(kv_cache_gb * 1024**3) // block_bytes
    if blocks - 1 < need[0]:
        raise ConfigError(
            f"rollout.kv_cache_gb={kv_cache_gb} holds {max(blocks - 1, 0) * BLOCK_TOKENS} KV tokens per rank, but a "
            f"request needs {need[0] * BLOCK_TOKENS} (prompt + max_new_tokens, in blocks of {BLOCK_TOKENS}); "
            f"raise rollout.kv_cache_gb to at least {(need[0] + 2) * block_bytes / 1024**3:.3g} or leave it unset")
    return blocks - 1


def _run(engine, prompts, budgets) -> dict[int, list[tuple[int, float, float]]]:
    """Add every prompt as a request and step the engine until all have finished."""
    from megatron.core.inference.inference_request import Status
    from megatron.core.inference.sampling_params import SamplingParams

    for i, (p, n) in enumerate(zip(prompts, budgets)):
        engine.add_request(i, list(p), SamplingParams(num_tokens_to_generate=n, termination_id=-1))
    while engine.has_unfinished_requests():
        for record in engine.step_modern()["finished_request_records"]:
            if record[-1].status == Status.FAILED:  # _budgets and _pool_blocks refuse what megatron would
                raise RuntimeError(f"the dynamic engine refused request {record.request_id}: {record[-1].events}")
    return engine.controller.drawn


def _sample(prompt: Sequence[int], drawn: list[tuple[int, float, float]], stop_ids: Sequence[int]) -> Sample:
    """The request's draws as a Sample, cut after its first stop token (as the static loop does)."""
    stop = set(stop_ids)
    n = next((k + 1 for k, (t, _, _) in enumerate(drawn) if t in stop), len(drawn))
    tokens, logps, ents = zip(*drawn[:n])
    return Sample(list(prompt), list(tokens), torch.tensor(logps, device=HOST), torch.tensor(ents, device=HOST),
                  truncated=n == len(drawn) and drawn[-1][0] not in stop)
