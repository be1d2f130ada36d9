"""CPU proofs of device discipline (docs/megatron_cpu.md).

On a CPU every tensor lands on the CPU whether or not the code said where, so a tensor that r1hpc
creates on the default device would pass every CPU test and then meet CUDA weights (or NCCL) on the
first GPU step. Two checks make that visible here:

- :class:`ImplicitAllocations`: a torch function mode that records every tensor factory call
  (``torch.zeros``, ``torch.tensor``, ...) made *from r1hpc's own code* without an explicit
  ``device``. Those are the calls that would allocate on the CPU next to a CUDA model. Calls from
  torch and megatron-core are not judged (not ours to change; megatron passes CUDA devices itself).
- :class:`CollectiveDevices`: wraps ``torch.distributed`` collectives and records every tensor whose
  device type differs from the one the backend needs (NCCL: CUDA; gloo on a CPU-only machine: the
  engine's device, the CPU).
"""
from __future__ import annotations

import os
import sys
from typing import Optional

import torch
from torch.overrides import TorchFunctionMode

import r1hpc

R1HPC_DIR = os.path.dirname(os.path.abspath(r1hpc.__file__))
TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
FACTORIES = {torch.zeros, torch.ones, torch.full, torch.empty, torch.tensor, torch.arange, torch.rand, torch.randn,
             torch.randint, torch.randperm, torch.linspace, torch.eye, torch.as_tensor}


def _caller() -> Optional[tuple[str, int]]:
    """(file, line) of the first frame outside torch and outside any torch function mode."""
    frame = sys._getframe(2)
    while frame is not None:
        name = os.path.abspath(frame.f_code.co_filename)
        if not (name.startswith(TORCH_DIR) or frame.f_code.co_name == "__torch_function__" or name == __file__):
            return name, frame.f_lineno
        frame = frame.f_back
    return None


class ImplicitAllocations(TorchFunctionMode):
    """Records ``file:line function`` for each factory call in r1hpc without ``device=``."""

    def __init__(self) -> None:
        super().__init__()
        self.found: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None and not _inherits_device(func, args):
            where = _caller()
            if where is not None and where[0].startswith(R1HPC_DIR):
                key = f"{os.path.relpath(where[0], os.path.dirname(R1HPC_DIR))}:{where[1]} torch.{func.__name__}"
                self.found[key] = self.found.get(key, 0) + 1
        return func(*args, **kwargs)


def _inherits_device(func, args) -> bool:
    """torch.as_tensor / torch.tensor of a tensor keep its device."""
    return func in (torch.as_tensor, torch.tensor) and bool(args) and isinstance(args[0], torch.Tensor)


_COLLECTIVES = ("all_reduce", "broadcast", "reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter",
                "reduce_scatter_tensor", "all_to_all_single", "send", "recv", "isend", "irecv")


class CollectiveDevices:
    """Wraps ``torch.distributed``'s tensor collectives while active; ``bad`` lists each call whose
    tensor is not on ``device_type`` (the backend's device), with the caller's file and line."""

    def __init__(self, device_type: str) -> None:
        self.device_type = device_type
        self.bad: list[str] = []
        self.calls = 0
        self._saved: dict[str, object] = {}

    def _wrap(self, name: str, fn):
        def wrapped(*args, **kwargs):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            tensors += [t for a in args if isinstance(a, (list, tuple)) for t in a if isinstance(t, torch.Tensor)]
            tensors += [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
            self.calls += 1
            for t in tensors:
                if t.device.type != self.device_type:
                    frame = sys._getframe(1)
                    self.bad.append(f"{os.path.relpath(frame.f_code.co_filename)}:{frame.f_lineno} {name} on "
                                    f"{t.device.type}, the backend needs {self.device_type}")
            return fn(*args, **kwargs)
        return wrapped

    def __enter__(self) -> "CollectiveDevices":
        for name in _COLLECTIVES:
            self._saved[name] = getattr(torch.distributed, name)
            setattr(torch.distributed, name, self._wrap(name, self._saved[name]))
        return self

    def __exit__(self, *exc) -> None:
        for name, fn in self._saved.items():
            setattr(torch.distributed, name, fn)


def backend_device_type() -> str:
    """The device type the process group's backend needs: CUDA for NCCL, else the CPU."""
    return "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
