"""Bytes each rank hands to collectives in one training step, counted and predicted.

``CollectiveCounter`` wraps torch.distributed's collectives while a step runs and sums the payload
(the tensor a rank passes in, or gathers into) per collective kind. ``predict_step_bytes`` is the
analytic model of the same numbers for a dense GPT at a TP x PP x DP layout; ``predict_step_time``
turns them into seconds on H800 nodes with stated bandwidths. docs/scaling.md explains the terms;
tests/launch/test_comm_model.py checks the model against counted bytes at small scale.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections import defaultdict

import torch

# kind -> how the payload is read from the call's arguments
_WRAPPED = {
    "all_reduce": lambda a, k: a[0] if a else k["tensor"],
    "all_gather_into_tensor": lambda a, k: a[0] if a else k["output_tensor"],
    "reduce_scatter_tensor": lambda a, k: a[1] if len(a) > 1 else k["input"],
    "all_to_all_single": lambda a, k: a[1] if len(a) > 1 else k["input"],
    "broadcast": lambda a, k: a[0] if a else k["tensor"],
    "send": lambda a, k: a[0] if a else k["tensor"],
    "isend": lambda a, k: a[0] if a else k["tensor"],
}
# kind -> position of the ``group`` argument (point-to-point kinds have none: they always move bytes)
_GROUP_ARG = {"all_reduce": 2, "all_gather_into_tensor": 2, "reduce_scatter_tensor": 3, "all_to_all_single": 4,
              "broadcast": 2}
# ring algorithms: bytes a rank sends per payload byte, for n ranks
_WIRE = {"all_reduce": lambda n: 2 * (n - 1) / n, "all_gather_into_tensor": lambda n: (n - 1) / n,
         "reduce_scatter_tensor": lambda n: (n - 1) / n, "all_to_all_single": lambda n: (n - 1) / n,
         "broadcast": lambda n: 1.0, "send": lambda n: 1.0, "isend": lambda n: 1.0}


class CollectiveCounter(contextlib.AbstractContextManager):
    """``with CollectiveCounter() as c: step()`` -> ``c.bytes[kind]``, ``c.calls[kind]``."""

    def __init__(self) -> None:
        self.bytes: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)
        self._saved: dict[str, object] = {}

    def __enter__(self):
        dist = torch.distributed
        for name, payload in _WRAPPED.items():
            original = getattr(dist, name)
            self._saved[name] = original

            def counted(*args, _name=name, _payload=payload, _original=original, **kwargs):
                if _moves_data(_name, args, kwargs):  # megatron also calls collectives on 1-rank groups
                    t = _payload(args, kwargs)
                    self.bytes[_name] += t.numel() * t.element_size()
                    self.calls[_name] += 1
                return _original(*args, **kwargs)

            setattr(dist, name, counted)
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self._saved.items():
            setattr(torch.distributed, name, original)
        self._saved.clear()


def _moves_data(kind: str, args: tuple, kwargs: dict) -> bool:
    if kind not in _GROUP_ARG:
        return True
    pos = _GROUP_ARG[kind]
    group = kwargs.get("group", args[pos] if len(args) > pos else None)
    return torch.distributed.get_world_size(group) > 1


@dataclasses.dataclass(frozen=True)
class StepShape:
    """One optimizer step of one data-parallel replica."""

    micro_batch_size: int
    seq_length: int
    num_micro_batches: int
    activation_bytes: int = 4  # fp32 here; 2 for bf16 activations
    grad_bytes: int = 4  # megatron reduces gradients in fp32 (grad_reduce_in_fp32)


def dense_params_per_rank(model, tp: int = 1, pp: int = 1) -> int:
    """Parameters one rank holds for a dense GPT (local spec: no biases, RMSNorm/LayerNorm weight
    only, SwiGLU when ``gated``), TP-split matrices and embedding, replicated norms."""
    h, f, v = model.hidden_size, model.ffn_hidden_size, model.vocab_size
    heads, groups = model.num_attention_heads, model.num_query_groups or model.num_attention_heads
    head_dim = h // heads
    gated = getattr(model, "gated_linear_unit", True)
    qkv = h * (heads + 2 * groups) * head_dim
    layer = (qkv + heads * head_dim * h + h * f * (2 if gated else 1) + f * h) // tp + 2 * h
    embed = v * h // tp
    layers = model.num_layers // pp
    out = layer * layers + h  # + final norm (last stage; with pp=1 the only stage)
    return out + embed * (1 if model.tie_embeddings else 2)


def predict_step_bytes(model, shape: StepShape, tp: int = 1, pp: int = 1, dp: int = 1) -> dict[str, int]:
    """Payload bytes per rank per step by parallel dimension (not by collective kind):

    - ``dp``: one all-reduce of every gradient this rank holds (DP > 1);
    - ``tp``: per layer and micro-batch two activation all-reduces forward and two backward, plus the
      embedding's forward all-reduce and the output layer's backward all-reduce (TP > 1, no
      sequence parallelism);
    - ``loss``: vocab-parallel cross entropy's three [s, b] all-reduces per micro-batch (max logit,
      target logit, sum of exponentials) over the TP group (TP > 1);
    - ``pp``: one activation send forward and one gradient send backward per micro-batch and stage
      boundary (PP > 1; a middle stage sends both ways).
    """
    act = shape.micro_batch_size * shape.seq_length * model.hidden_size * shape.activation_bytes
    m = shape.num_micro_batches
    sb = shape.micro_batch_size * shape.seq_length * 4
    out = {"dp": 0, "tp": 0, "pp": 0, "loss": m * 3 * sb if tp > 1 else 0}
    if dp > 1:
        out["dp"] = dense_params_per_rank(model, tp, pp) * shape.grad_bytes
    if tp > 1:
        layers = model.num_layers // pp
        out["tp"] = m * (4 * layers * act + 2 * act)
    if pp > 1:
        out["pp"] = m * act
    return out


@dataclasses.dataclass(frozen=True)
class Hardware:
    """H800 nodes: 8 GPUs on NVLink (400 GB/s per GPU, the H800's cap), 8 x 400 Gb/s InfiniBand per
    node (50 GB/s per GPU); dense bf16 peak 989 TFLOP/s at an assumed 40% utilisation."""

    nvlink_gbps: float = 400.0
    ib_gbps_per_gpu: float = 50.0
    gpus_per_node: int = 8
    peak_tflops: float = 989.0
    mfu: float = 0.4


def predict_step_time(model, shape: StepShape, tp: int, pp: int, dp: int, hw: Hardware = Hardware()) -> dict:
    """Seconds per step: compute (6 x params x tokens / achieved FLOP/s) and each dimension's
    communication at ring wire volume; TP and PP inside a node (NVLink), DP across nodes (IB) once
    the job spans more than a node. No overlap assumed (an upper bound)."""
    b = predict_step_bytes(model, shape, tp, pp, dp)
    tokens = shape.micro_batch_size * shape.seq_length * shape.num_micro_batches
    params = dense_params_per_rank(model, tp, pp)
    compute = 6 * params * tokens / (hw.peak_tflops * 1e12 * hw.mfu)
    cross_node = tp * pp * dp > hw.gpus_per_node
    dp_bw = (hw.ib_gbps_per_gpu if cross_node else hw.nvlink_gbps) * 1e9
    t = {"compute_s": compute,
         "tp_s": (b["tp"] + b["loss"]) * _WIRE["all_reduce"](tp) / (hw.nvlink_gbps * 1e9) if tp > 1 else 0.0,
         "pp_s": 2 * b["pp"] / (hw.nvlink_gbps * 1e9) if pp > 1 else 0.0,
         "dp_s": b["dp"] * _WIRE["all_reduce"](dp) / dp_bw if dp > 1 else 0.0}
    t["step_s"] = sum(t.values())
    return t
