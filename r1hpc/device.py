"""Where r1hpc's tensors live. The engine decides the device once (``cuda:<local_rank>`` with CUDA,
else the CPU) and everything made for the model, the loss and the metrics follows it; collective
buffers go on the device the process group's backend needs (NCCL: CUDA, gloo: CPU); host-side
staging (token lists, data loading, outputs for Python) says ``HOST``. tests/device_guard.py proves
on the CPU that no r1hpc allocation is left to the default device (docs/megatron_cpu.md)."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch

HOST = torch.device("cpu")


def engine_device() -> torch.device:
    """The model's device on this rank: the CUDA device ``init_distributed`` selected, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else HOST


def collective_device(group: Optional[Any] = None) -> torch.device:
    """Where a collective's tensors must be for ``group``'s backend: NCCL takes CUDA tensors only."""
    if torch.distributed.is_initialized() and torch.distributed.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return HOST


def to_device(batch: dict, device: torch.device) -> dict:
    """A micro-batch's tensors, and the tensors of its dataclass entries (a shared-prefix layout), on
    ``device``, copied once; host tensors are pinned first so the copy to a GPU is asynchronous (other
    entries pass through)."""
    if device.type == "cpu":
        return dict(batch)
    return {k: _moved(v, device) for k, v in batch.items()}


def _moved(v: Any, device: torch.device) -> Any:
    if isinstance(v, torch.Tensor) and v.device != device:
        return (v.pin_memory() if v.device.type == "cpu" else v).to(device, non_blocking=True)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return dataclasses.replace(v, **{f.name: _moved(getattr(v, f.name), device)
                                         for f in dataclasses.fields(v) if f.init})
    return v
