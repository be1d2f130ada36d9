"""Facts a CPU fast path decides once per megatron module: whether it has the plain form the path
computes. They follow from the module's config, shapes and process groups, fixed once it is built, so
each is kept on the module and a decode step reads an attribute instead of deciding again."""
from __future__ import annotations

from typing import Callable, TypeVar

import torch

T = TypeVar("T")


def decided_once(module: torch.nn.Module, name: str, decide: Callable[[torch.nn.Module], T]) -> T:
    """``decide(module)``, computed on the first call and kept as ``module.<name>``."""
    value = module.__dict__.get(name)
    if value is None:
        value = decide(module)
        setattr(module, name, value)
    return value
