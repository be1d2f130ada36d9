"""Decoding's skinny matrix multiplies on a CPU, in the layout the CPU runs fast.

A decode step multiplies a few rows of activations by every weight: ``x @ W.T`` with ``x`` of a few
rows, a product that should run at the memory bandwidth (it reads each weight once). torch's CPU
BLAS (MKL in the x86 wheels) runs it far below that for 3 to a few dozen rows, differently by CPU
vendor, so the fix depends on the vendor (``vendor_id`` in ``/proc/cpuinfo``):

* AMD (MKL takes other kernels there): the same product as ``(W @ x.T).T``, 1.3-4.9x per layer at
  2-8 rows on a 2-core AMD EPYC, a SmolLM2 decode step of 4 rows 111 -> 58 ms
  (:func:`weight_major_when_skinny`). On an Intel Xeon that layout is the slower one (0.36-0.8x).
* Intel: oneDNN's product with the weights reordered into its blocked layout once per rollout
  (:func:`packed_linear_weights`, :func:`packed_when_decoding`), 4-32 rows: on a 2-core Xeon the
  output layer 1.3-3x, fc1 1.4-1.8x, qkv even, proj and fc2 0.7-1.0x at 4-12 rows with the weights
  from cache; a whole SmolLM2 rollout of 16 rows x 64 tokens 7.2 -> 6.1 s. Below 4 rows MKL's own
  product is at the bandwidth already and stays, and so do weights under :data:`PACKED_MIN_WEIGHT`.
  bf16 weights too (a bf16 model's rollouts): 16 rows, weights from cache, fc1 128 -> 69 us, qkv
  52 -> 27 us, the output layer 2.3 -> 1.4 ms; a bf16 SmolLM2 rollout of 16 rows x 64 tokens inside
  ``r1hpc train`` 6.0 -> 5.4 s (a Xeon with AMX).

``benchmarks/bench_cpu_linear.py`` measures all three on SmolLM2-135M's shapes. Only forwards without
autograd take these paths (rollouts, evaluation, the log-prob passes of frozen models); training's
forward and backward keep megatron's own code, so gradients are unchanged. Applied by
:func:`r1hpc.model.cpu_compat.apply` on CPU-only hosts.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator

import torch

from r1hpc.model.decided_once import decided_once

#: Rows (tokens of all sequences together) up to which the weight-major product is used.
SKINNY_ROWS = 8
#: Rows for which the oneDNN product on blocked weights is used (fewer: MKL's own is at bandwidth).
PACKED_ROWS = (4, 32)
#: Weights (elements) from which a blocked copy is made: oneDNN's call costs about 15 us more than
#: MKL's, which smaller products do not win back (a 512 x 256 weight: 37 against 33 us at 16 rows).
PACKED_MIN_WEIGHT = 1 << 18


def cpuinfo_field(key: str, cpuinfo: str | None = None) -> str | None:
    """``key``'s value for the first processor in ``/proc/cpuinfo`` (or the given text); None if unknown."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read(8192)
        except OSError:
            return None
    values = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.split(":", 1)[0].strip() == key]
    return values[0] if values else None


def cpu_vendor(cpuinfo: str | None = None) -> str | None:
    """``vendor_id`` of the first processor in ``/proc/cpuinfo`` (or the given text); None if unknown."""
    return cpuinfo_field("vendor_id", cpuinfo)


#: CPU flags that set how fast fp32 and bf16 products run: without ``avx512_bf16`` or ``amx_bf16`` a
#: bf16 product is slower than an fp32 one (768 x 576 x 3072: 46 against 9 ms on a 2-core Xeon with
#: AVX-512 only; with AMX 6-7x faster than fp32).
MATRIX_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_matrix_flags(cpuinfo: str | None = None) -> list[str]:
    """Which of :data:`MATRIX_FLAGS` the first processor in ``/proc/cpuinfo`` (or the given text) has."""
    flags = set((cpuinfo_field("flags", cpuinfo) or "").split())
    return [flag for flag in MATRIX_FLAGS if flag in flags]


def weight_major_pays_off(cpuinfo: str | None = None) -> bool:
    """Whether this CPU is one where the weight-major product was measured faster: an AMD one."""
    return cpu_vendor(cpuinfo) == "AuthenticAMD"


def packing_pays_off(cpuinfo: str | None = None) -> bool:
    """Whether this CPU is one where oneDNN's product on blocked weights was measured faster: an Intel
    one, with torch built with oneDNN (the x86 wheels are)."""
    return cpu_vendor(cpuinfo) == "GenuineIntel" and torch.backends.mkldnn.is_available()


def skinny_matmul(input: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``input @ weight.T`` for ``input`` [..., in] and ``weight`` [out, in], as ``(weight @ x.T).T`` with
    ``x`` row-major. The result is made row-major too (a copy of a few rows): a column-major one would
    reach the next layer as a row-major ``x.T``, the slow layout again."""
    rows = input.numel() // input.shape[-1]
    x = input.reshape(rows, input.shape[-1]).contiguous()
    return torch.matmul(weight, x.t()).t().contiguous().view(*input.shape[:-1], weight.shape[0])


# (input, weight) -> input @ weight.T on this CPU's decode path, or None where it does not apply; set
# by the wrapper installed on megatron's linear functions
_decode_product: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None


def decode_matmul(input: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``input @ weight.T`` in a forward without autograd, computed as megatron's linear functions
    compute it on this CPU: the installed decode path where it applies, else megatron's own product."""
    output = _decode_product(input, weight) if _decode_product is not None and input.device.type == "cpu" else None
    return torch.matmul(input, weight.t()) if output is None else output


def _taking_decode_product(linear: Callable, product: Callable) -> Callable:
    """``linear`` (megatron's linear function) computing ``product`` instead for calls without autograd
    and sequence parallelism (whose input must be all-gathered first) on a CPU, where it applies;
    ``product`` becomes :func:`decode_matmul`'s too."""
    global _decode_product
    _decode_product = product

    @functools.wraps(linear)
    def wrapper(input, weight, bias=None, *args, **kwargs):
        output = None
        if (not torch.is_grad_enabled() and not args and not kwargs.get("sequence_parallel")
                and input.device.type == "cpu"):
            output = product(input, weight)
        if output is None:
            return linear(input, weight, bias, *args, **kwargs)
        return output + bias if bias is not None else output

    return wrapper


def _on_one_rank(linear: torch.nn.Module) -> bool:
    """Whether ``linear`` (megatron's column- or row-parallel linear) is whole on this rank with nothing
    deferred or offloaded: its tensor-parallel all-gathers, all-reduces and scatters are identities."""
    return decided_once(linear, "_r1hpc_one_rank", lambda layer: (
        (layer.tp_group is None or layer.tp_group.size() == 1) and not layer.sequence_parallel
        and getattr(layer, "gtp_remat_size", 1) == 1  # 0.19's sharded weights
        and not layer.config.defer_embedding_wgrad_compute and layer.config._cpu_offloading_context is None))


def _direct(input: torch.Tensor, linear: torch.nn.Module) -> bool:
    return not torch.is_grad_enabled() and input.device.type == "cpu" and _on_one_rank(linear)


def _with_bias(linear: torch.nn.Module, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(output, bias) as megatron's linear layers return them: the bias added, or handed back to be fused later."""
    if linear.skip_bias_add:
        return output, linear.bias
    return (output if linear.bias is None else output + linear.bias), None


def direct_column_forward(forward: Callable) -> Callable:
    """Wrap ``ColumnParallelLinear.forward``: without autograd, on a CPU, whole on the rank, return
    megatron's result (:func:`decode_matmul`, plus the bias unless it is handed back) without its
    identity communication calls and autograd Function (about 24 us a call, twice the time of the
    16 x 128 x 256 product itself); otherwise call megatron's."""

    @functools.wraps(forward)
    def wrapper(self, input_, weight=None, runtime_gather_output=None):
        if weight is None:
            weight = self.weight
        if (weight is None or weight.shape != (self.output_size_per_partition, self.input_size)
                or not _direct(input_, self)):
            return forward(self, input_, weight, runtime_gather_output)  # megatron's errors included
        return _with_bias(self, decode_matmul(input_, weight))

    return wrapper


def direct_row_forward(forward: Callable) -> Callable:
    """Wrap ``RowParallelLinear.forward`` as :func:`direct_column_forward` wraps the column-parallel one."""

    @functools.wraps(forward)
    def wrapper(self, input_):
        if not _direct(input_, self):
            return forward(self, input_)
        return _with_bias(self, decode_matmul(input_, self.weight))

    return wrapper


def weight_major_when_skinny(linear: Callable) -> Callable:
    """Wrap megatron's ``linear_with_frozen_weight`` or ``linear_with_grad_accumulation_and_async_allreduce``:
    without autograd, without sequence parallelism (whose input must be all-gathered first) and with
    2 to :data:`SKINNY_ROWS` rows, compute the product weight-major; otherwise call megatron's."""
    return _taking_decode_product(linear, _weight_major_product)


def _weight_major_product(input: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    rows = input.numel() // max(input.shape[-1], 1)
    return skinny_matmul(input, weight) if 2 <= rows <= SKINNY_ROWS else None


# weight's data address -> (its shape, oneDNN-blocked copy), filled only inside packed_linear_weights
_packed: dict[int, tuple[torch.Size, torch.Tensor]] = {}
_packing_installed = False
#: Weight dtypes given blocked copies (oneDNN's bf16 product accumulates in fp32, as megatron's does).
_PACKED_DTYPES = (torch.float32, torch.bfloat16)


def _linear_weights(model: torch.nn.Module) -> Iterator[torch.Tensor]:
    """The fp32/bf16 CPU weights megatron's linear layers multiply by, the tied output layer's included."""
    from megatron.core.models.common.language_module.language_module import LanguageModule
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear

    for module in model.modules():
        weight = None
        if isinstance(module, (ColumnParallelLinear, RowParallelLinear)):
            weight = module.weight
        elif isinstance(module, LanguageModule) and module.post_process and module.share_embeddings_and_output_weights:
            weight = module.shared_embedding_or_output_weight()
        if (weight is not None and weight.dim() == 2 and weight.dtype in _PACKED_DTYPES and weight.device.type == "cpu"
                and weight.numel() >= PACKED_MIN_WEIGHT):
            yield weight


@contextlib.contextmanager
def packed_linear_weights(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, decode-sized products by ``model``'s linear weights use oneDNN-blocked copies
    made on entry (one pass over the weights) and dropped on exit: a rollout reads every weight once
    per token, training never sees the copies, and no copy outlives an update of its weight. A no-op
    where :func:`packed_when_decoding` is not installed (GPU hosts, CPUs where it does not pay off)."""
    if not _packing_installed or _packed:  # not installed, or already inside (nested rollout calls)
        yield
        return
    try:
        for weight in _linear_weights(model):
            _packed[weight.data_ptr()] = (weight.shape, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None))
        yield
    finally:
        _packed.clear()


def packed_product(input: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int
                   ) -> torch.Tensor:
    """``input @ W.T + bias`` with ``W`` as its oneDNN-blocked copy ``packed``."""
    rows = input.numel() // input.shape[-1]
    out = torch.ops.mkldnn._linear_pointwise(input.reshape(rows, input.shape[-1]).contiguous(), packed, bias,
                                             "none", [], "")
    return out.view(*input.shape[:-1], out_features)


def packed_when_decoding(linear: Callable) -> Callable:
    """Wrap megatron's ``linear_with_frozen_weight`` or ``linear_with_grad_accumulation_and_async_allreduce``:
    inside :func:`packed_linear_weights`, without autograd, without sequence parallelism and with
    :data:`PACKED_ROWS` rows, multiply by the weight's blocked copy; otherwise call megatron's."""
    global _packing_installed
    _packing_installed = True
    return _taking_decode_product(linear, _packed_decode_product)


def _packed_decode_product(input: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    entry = _packed.get(weight.data_ptr()) if _packed else None
    rows = input.numel() // max(input.shape[-1], 1)
    if entry is None or entry[0] != weight.shape or not PACKED_ROWS[0] <= rows <= PACKED_ROWS[1]:
        return None
    return packed_product(input, entry[1], None, weight.shape[0])
