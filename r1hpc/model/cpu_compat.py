"""Run megatron-core on machines without CUDA (laptops, CI) by patching the few places that assume it.

megatron-core is written for GPUs; on a CPU its model code works but a handful of helpers hard-code
``device="cuda"``, CUDA RNG state or CUDA tensor type strings. This module fixes exactly those,
nothing else, and only when CUDA is absent. Every patch is listed in :data:`PATCHES` with the reason
(``r1hpc info`` prints them). The patches were written against the megatron-core series in
:data:`r1hpc.model.mcore_compat.SUPPORTED`, which also says how those series differ; another version,
or a patch target that is not where it should be, raises a clear error instead of failing somewhere
deep inside a training step.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import queue
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode

from r1hpc.model import mcore_compat


@dataclasses.dataclass(frozen=True)
class Patch:
    target: str
    why: str


PATCHES: list[Patch] = []
_applied = False


class CpuCompatError(RuntimeError):
    """megatron-core cannot be made to run on this CPU-only machine."""


def _is_cuda_device(dev: Any) -> bool:
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    if isinstance(dev, str):
        return dev.startswith("cuda")
    return isinstance(dev, int) and not isinstance(dev, bool)


class CudaToCpuMode(TorchFunctionMode):
    """Rewrites ``device=cuda`` arguments (and ``.cuda()`` / ``.to("cuda")``) to the CPU, and names a
    CPU tensor's type as its CUDA twin (``.type()`` -> ``'torch.cuda.BFloat16Tensor'``), the strings
    megatron's mixed-precision optimizer sorts its parameters by.

    Entered only around megatron entry points that allocate on ``"cuda"`` in many places
    (pipeline schedules, optimizer methods). A schedule runs the model's forward and backward, so
    every torch call of a training or log-prob pass goes through the mode; the rollout's decoding
    loop calls the model directly and runs without it.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name if name.startswith("torch.cuda.") else name.replace("torch.", "torch.cuda.", 1)
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


def _in_cpu_mode(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with CudaToCpuMode():
            return fn(*args, **kwargs)

    wrapper.__r1hpc_cpu_wrapped__ = True  # type: ignore[attr-defined]
    return wrapper


class CpuRNGStatesTracker:
    """Megatron's named RNG streams (data-parallel, tensor-parallel, expert) on the CPU generator.

    ``fork(name)`` swaps the CPU RNG state to the named stream and back, so dropout inside
    tensor-parallel regions differs per TP rank exactly as megatron intends on a GPU.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.reset()

    def reset(self) -> None:
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()
        self._initialized = False

    def is_initialized(self) -> bool:
        return self._initialized

    def get_states(self) -> dict[str, torch.Tensor]:
        return dict(self.states_)

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self._initialized = True
        self.states_ = dict(states)

    def add(self, name: str, seed: int) -> None:
        if seed in self.seeds_:
            raise CpuCompatError(f"RNG seed {seed} already used")
        if name in self.states_:
            raise CpuCompatError(f"RNG state {name} already exists")
        self._initialized = True
        self.seeds_.add(seed)
        self.states_[name] = torch.Generator().manual_seed(seed).get_state()

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng"):
        if name not in self.states_:
            raise CpuCompatError(f"RNG state {name} was not added")
        orig = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)


def _check_version() -> mcore_compat.Series:
    try:
        return mcore_compat.features()
    except mcore_compat.MegatronVersionError as e:
        raise CpuCompatError(f"{e}; r1hpc's CPU compatibility layer knows only those (a CUDA machine needs "
                             f"no patches)") from None


def _patch(owner: Any, name: str, new: Any, why: str, *, create: bool = False) -> None:
    """Replace ``owner.name`` (a module or class attribute) with ``new``. A missing target means megatron
    moved the code this patch fixes: fail here, naming it, rather than set an attribute nothing reads.
    ``create`` is for the few patches that supply a name megatron leaves undefined."""
    label = f"{f'{owner.__module__}.{owner.__qualname__}' if isinstance(owner, type) else owner.__name__}.{name}"
    if not create and not hasattr(owner, name):
        raise CpuCompatError(
            f"CPU patch target {label} does not exist in megatron-core {mcore_compat.installed_version()} "
            f"(patch: {why}); r1hpc.model.cpu_compat must be updated for this version")
    setattr(owner, name, new)
    PATCHES.append(Patch(label, why))


def apply() -> list[Patch]:
    """Apply every patch once, if CUDA is absent. Returns the list applied (empty on a GPU node)."""
    global _applied
    if torch.cuda.is_available() or _applied:
        return PATCHES
    series = _check_version()
    _flush_denormals()

    from megatron.core.fusions import fused_softmax
    from megatron.core.optimizer import clip_grads
    from megatron.core.pipeline_parallel import schedules
    from megatron.core.tensor_parallel import random as tp_random
    from megatron.core.transformer.moe import moe_utils, token_dispatcher

    _patch(torch.cuda, "current_device", lambda: "cpu",
           "megatron allocates buffers on torch.cuda.current_device(); return 'cpu' so they land on the CPU")
    _patch(torch.cuda, "synchronize", lambda *a, **k: None,
           "distributed checkpointing synchronizes the GPU before writing; nothing to wait for on CPU")
    _patch(fused_softmax, "get_default_causal_mask",
           lambda sq: torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1),
           "the default causal mask is created with device='cuda'")
    _patch(tp_random, "initialize_rng_tracker", _init_cpu_rng_tracker,
           "model_parallel_cuda_manual_seed seeds CUDA generators; track megatron's named RNG streams on the CPU")
    _patch(tp_random, "_set_cuda_rng_state", lambda *a, **k: None,
           "CUDA RNG state cannot be set without CUDA (the CPU tracker holds the streams)")
    _patch(tp_random.torch.cuda, "manual_seed", lambda seed: None,
           "torch.cuda.manual_seed is meaningless on CPU; per-rank CPU seeding is done by r1hpc.distributed")
    if not series.te_general_gemm_defined:
        _patch(moe_utils, "te_general_gemm", None,
               "the MoE router references te_general_gemm, undefined when Transformer Engine is absent", create=True)
    _patch(token_dispatcher.torch.cuda, "Stream", _NoStream,
           "the all-to-all token dispatcher creates a side CUDA stream for device-to-host copies")
    _patch(token_dispatcher.torch.cuda, "current_stream", lambda *a, **k: _NoStream(),
           "the all-to-all token dispatcher waits on the current CUDA stream")
    _patch(token_dispatcher.torch.cuda, "stream", lambda s: contextlib.nullcontext(),
           "the all-to-all token dispatcher switches CUDA streams")
    _patch(clip_grads, "clip_grad_by_total_norm_fp32", _clip_grad_by_total_norm_cpu,
           "asserts grad.type() == 'torch.cuda.FloatTensor' and allocates an overflow buffer on cuda")
    _patch_optimizer_norm_refs(clip_grads)
    _patch_optimizer_classes()
    for fname in ("forward_backward_no_pipelining", "forward_backward_pipelining_without_interleaving",
                  "forward_backward_pipelining_with_interleaving"):
        _patch(schedules, fname, _in_cpu_mode(getattr(schedules, fname)),
               "pipeline schedules allocate token counters and p2p buffers with device='cuda'")
    from megatron.core.models.common.language_module import language_module

    lm = language_module.LanguageModule
    _patch(lm, "setup_embeddings_and_output_layer", _in_cpu_mode(lm.setup_embeddings_and_output_layer),
           "with PP > 1 and tied embeddings it moves the output-layer copy with .cuda() before the all-reduce")
    _patch_all_to_all()
    _patch_skinny_linears()
    _patch_direct_forwards()
    _patch_checkpoint_writer(series)
    if series.dynamic_engine_cpu:
        from r1hpc.model import cpu_inference

        cpu_inference.apply(_patch)
    _applied = True
    return PATCHES


def _flush_denormals() -> None:
    """Flush denormal floats to zero (FTZ/DAZ), as GPU kernels mostly do. GRPO gradients and Adam's
    squared gradients underflow into the denormal range, where x86 arithmetic is ~100x slower: on
    SmolLM2-135M one [s, b, heads, dim] gradient add took 150 ms a layer (4.6 s of a 12 s update).
    A value below 1.2e-38 becoming 0 changes no result at fp32 tolerance. Called before the first
    parallel op, so OpenMP's worker threads, created later, inherit the mode."""
    if not torch.set_flush_denormal(True):
        return  # the CPU has no FTZ/DAZ (not x86 with SSE3): nothing changed
    PATCHES.append(Patch("torch.set_flush_denormal(True)",
                         "denormal floats (tiny gradients, Adam's squared gradients) are ~100x slower on CPU"))


class _NoStream:
    """Stand-in for a CUDA stream on CPU: every wait/sync is a no-op."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, other: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def record_event(self, *args: Any, **kwargs: Any) -> "_NoStream":
        return self  # stands in for the event too: its synchronize() is a no-op

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _NoStream)

    __hash__ = object.__hash__


def _init_cpu_rng_tracker(*args: Any, force_reset: bool = False, **kwargs: Any) -> None:
    from megatron.core.tensor_parallel import random as tp_random

    if tp_random._CUDA_RNG_STATE_TRACKER_INITIALIZED and not force_reset:
        return
    tp_random._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    tp_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True


def _clip_grad_by_total_norm_cpu(parameters, max_norm, total_norm, use_decoupled_grad=False):
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0:
        for p in parameters:
            grad = getattr(p, "decoupled_grad", None) if use_decoupled_grad else p.grad
            if grad is not None:
                grad.detach().mul_(clip_coeff)


def _patch_optimizer_norm_refs(clip_grads: Any) -> None:
    """The optimizer module imported the clip helper by name; point that name at the patched one."""
    from megatron.core.optimizer import optimizer as opt_mod

    _patch(opt_mod, "clip_grad_by_total_norm_fp32", clip_grads.clip_grad_by_total_norm_fp32,
           "megatron.core.optimizer.optimizer imported clip_grad_by_total_norm_fp32 by name")


_OPTIMIZER_METHODS = ("__init__", "step", "prepare_grads", "step_with_ready_grads", "get_grad_norm",
                      "clip_grad_norm", "count_zeros", "reload_model_params", "state_dict", "load_state_dict",
                      "sharded_state_dict", "_copy_model_grads_to_main_grads", "_unscale_main_grads_and_check_for_nan")


def _patch_optimizer_classes() -> None:
    """Optimizer constructors and steps allocate scales, norms and found-inf flags on 'cuda' in many
    places; run those methods (a few calls per step, so no measurable cost) under CudaToCpuMode."""
    from megatron.core.optimizer import distrib_optimizer, optimizer as opt_mod

    for mod in (opt_mod, distrib_optimizer):
        for cls in vars(mod).values():
            if not (isinstance(cls, type) and issubclass(cls, opt_mod.MegatronOptimizer) and cls.__module__ == mod.__name__):
                continue
            for name in _OPTIMIZER_METHODS:
                fn = cls.__dict__.get(name)
                if callable(fn) and not getattr(fn, "__r1hpc_cpu_wrapped__", False):
                    setattr(cls, name, _in_cpu_mode(fn))
    PATCHES.append(Patch("megatron.core.optimizer.*Optimizer methods",
                         "constructors and step() allocate loss scales, norms and found-inf flags with device='cuda'"))


def _patch_skinny_linears() -> None:
    from megatron.core.tensor_parallel import layers

    from r1hpc.model.cpu_linear import (packed_when_decoding, packing_pays_off, weight_major_pays_off,
                                        weight_major_when_skinny)

    if weight_major_pays_off():
        wrap, why = weight_major_when_skinny, ("decode steps' few-row x @ W.T runs 1.3-4.9x faster as (W @ x.T).T on "
                                               "MKL on AMD CPUs (no-grad forwards of 2-8 rows only; r1hpc.model.cpu_linear)")
    elif packing_pays_off():
        wrap, why = packed_when_decoding, ("decode steps' few-row x @ W.T runs faster through oneDNN on weights reordered "
                                           "once per rollout on Intel CPUs (SmolLM2 rollout 1.18x; no-grad forwards of "
                                           "4-32 rows inside a rollout only; r1hpc.model.cpu_linear)")
    else:
        return  # MKL's own product: neither path was measured faster here
    for fname in ("linear_with_frozen_weight", "linear_with_grad_accumulation_and_async_allreduce"):
        _patch(layers, fname, wrap(getattr(layers, fname)), why)


def _patch_direct_forwards() -> None:
    """Forwards without autograd on a CPU that skip megatron's per-module machinery, output bit for bit."""
    from megatron.core.tensor_parallel import layers
    from megatron.core.transformer.moe import moe_layer
    from megatron.core.transformer.transformer_layer import TransformerLayer

    from r1hpc.model.cpu_layer import plain_layer_forward
    from r1hpc.model.cpu_linear import direct_column_forward, direct_row_forward
    from r1hpc.model.cpu_moe import local_moe_forward

    why = ("without autograd and whole on the rank, a linear layer's identity TP communication calls and autograd "
           "Function cost about 24 us a call, twice a tiny decode product's time; compute the product directly (same "
           "output bit for bit; r1hpc.model.cpu_linear)")
    _patch(layers.ColumnParallelLinear, "forward", direct_column_forward(layers.ColumnParallelLinear.forward), why)
    _patch(layers.RowParallelLinear, "forward", direct_row_forward(layers.RowParallelLinear.forward), why)
    _patch(TransformerLayer, "forward", plain_layer_forward(TransformerLayer.forward),
           "without autograd the layer's offload/recompute contexts, NVTX ranges and bias-dropout-add lookups cost "
           "about 190 us a decode step's layer; call the plain pre-norm layer's submodules directly (same output bit "
           "for bit; r1hpc.model.cpu_layer)")
    _patch(moe_layer.MoELayer, "forward", local_moe_forward(moe_layer.MoELayer.forward),
           "without autograd the dispatcher's permute/sort/unpermute bookkeeping is most of a CPU decode step's "
           "MoE layer; with every expert local, route and run each expert's rows directly (same output bit for "
           "bit; r1hpc.model.cpu_moe)")


def _patch_all_to_all() -> None:
    """gloo's all_to_all_single needs split sizes as Python lists, megatron passes tensors."""
    from megatron.core.tensor_parallel import mappings

    original = mappings.torch.distributed.all_to_all_single
    if getattr(original, "__r1hpc_cpu_wrapped__", False):
        return

    @functools.wraps(original)
    def all_to_all_single(output, input, output_split_sizes=None, input_split_sizes=None, *a, **k):
        if output_split_sizes is not None:
            output_split_sizes = [int(n) for n in output_split_sizes]
        if input_split_sizes is not None:
            input_split_sizes = [int(n) for n in input_split_sizes]
        return original(output, input, output_split_sizes, input_split_sizes, *a, **k)

    all_to_all_single.__r1hpc_cpu_wrapped__ = True  # type: ignore[attr-defined]
    PATCHES.append(Patch("torch.distributed.all_to_all_single",
                         "gloo needs all-to-all split sizes as lists of ints; megatron's MoE dispatcher passes tensors/arrays"))
    torch.distributed.all_to_all_single = all_to_all_single


def _patch_checkpoint_writer(series: mcore_compat.Series) -> None:
    """Distributed checkpointing takes its writer's results queue from a multiprocessing Manager
    (a spawned server process) on every save; on CPU a thread queue does. 0.16 also writes through
    forked worker processes, and forking a process whose gloo threads are running deadlocks (seen
    here), so there the buckets are written in the calling process, one after another (0.19 writes
    with threads, which is safe)."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async as fsa

    _patch(fsa, series.results_queue_factory, lambda *a, **k: queue.Queue(),
           "checkpoint saving starts a multiprocessing Manager for its results queue")
    if series.threaded_checkpoint_writer:
        return
    writer = fsa.FileSystemWriterAsync

    def write_in_process(transform_list, use_msc, rank, write_buckets, global_results_queue):
        results, done = queue.Queue(), queue.Queue()
        collected: dict = {}
        for i, bucket in enumerate(write_buckets):
            done.put(i)
            writer.write_preloaded_data(transform_list, i, bucket, results, done, True, use_msc=use_msc)
            idx, out = results.get()
            if isinstance(out, Exception):
                global_results_queue.put(out)
                return
            collected[idx] = out
        global_results_queue.put(collected)

    _patch(writer, "write_preloaded_data_multiproc", staticmethod(write_in_process),
           "forks writer processes while gloo threads run, which deadlocks; write in-process")
