"""The megatron training engine: model chunks in megatron DDP, the megatron optimizer, and one
``train_step`` over micro-batches through megatron's forward-backward schedule (pipelined when
PP > 1). Pretraining, SFT and GRPO differ only in the forward-step function they pass in.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, Iterable, Optional

import torch

from r1hpc.config import ConfigError
from r1hpc.device import collective_device, engine_device, to_device
from r1hpc.distributed import ParallelConfig
from r1hpc.model.config import ModelConfig
from r1hpc.model.provider import build_model


@dataclasses.dataclass
class OptimConfig:
    """Adam with decoupled weight decay and gradient clipping. The learning rate warms up linearly
    over ``warmup_steps``, then decays (``decay_style``) to ``lr * min_lr_ratio`` over the first
    ``decay_steps`` optimizer steps (0: constant after warm-up; null: over the whole stage). Every
    training stage has one (``pretrain.optim``, ``sft.optim``, ``grpo.optim``): same keys, same
    meaning, the stage's own defaults."""

    # keys of earlier releases -> (their replacement, why); the config loader names them in its error
    RENAMED_KEYS: ClassVar[dict[str, tuple[str, str]]] = {
        "min_lr": ("min_lr_ratio", "the floor is a fraction of lr in every stage: min_lr_ratio = min_lr / lr")}

    lr: float = 1e-4
    min_lr_ratio: float = 0.0
    warmup_steps: int = 0
    decay_steps: Optional[int] = 0
    decay_style: str = "cosine"
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    use_distributed_optimizer: bool = False

    @property
    def min_lr(self) -> float:
        return self.lr * self.min_lr_ratio

    def for_stage(self, total_steps: int) -> "OptimConfig":
        """This config with ``decay_steps: null`` resolved to the stage's ``total_steps`` optimizer steps."""
        return self if self.decay_steps is not None else dataclasses.replace(self, decay_steps=total_steps)

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"key 'lr' must be positive, got {self.lr}")
        if self.clip_grad < 0:
            raise ConfigError(f"key 'clip_grad' must be >= 0, got {self.clip_grad}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"key 'min_lr_ratio' must be in [0, 1], got {self.min_lr_ratio}")
        if (self.decay_steps is not None and self.decay_steps < 0) or self.warmup_steps < 0:
            raise ConfigError("keys 'decay_steps' and 'warmup_steps' must be >= 0 (decay_steps: or null)")
        if self.decay_style not in _DECAY_SHAPES:
            raise ConfigError(f"key 'decay_style' must be one of {sorted(_DECAY_SHAPES)}, got {self.decay_style!r}")


# the schedule keys pretrain and sft held before each stage had its own ``optim`` section
MOVED_INTO_OPTIM: dict[str, tuple[str, str]] = {
    k: (f"optim.{k}", "every stage's optimizer settings are one section with the same keys")
    for k in ("lr", "min_lr_ratio", "warmup_steps")}

_DECAY_SHAPES: dict[str, Callable[[float], float]] = {
    "cosine": lambda progress: 0.5 * (1 + math.cos(math.pi * progress)),
    "linear": lambda progress: 1 - progress,
}


def lr_at(cfg: OptimConfig, step: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): warm-up, then decay to ``lr * min_lr_ratio``."""
    if cfg.decay_steps is None:
        raise ValueError("OptimConfig.decay_steps is null (the whole stage): resolve it with for_stage(total_steps)")
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if not cfg.decay_steps:
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.decay_steps - cfg.warmup_steps))
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * _DECAY_SHAPES[cfg.decay_style](progress)


ForwardStep = Callable[[Iterable, torch.nn.Module], tuple[torch.Tensor, Callable]]


class Engine:
    """Owns the policy on this rank: model chunks (DDP-wrapped), optimizer, learning rate."""

    def __init__(self, model_cfg: ModelConfig, parallel_cfg: ParallelConfig, optim_cfg: OptimConfig,
                 *, trainable: bool = True) -> None:
        from megatron.core.distributed import (DistributedDataParallel, DistributedDataParallelConfig,
                                               finalize_model_grads)
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        self.model_cfg, self.parallel_cfg, self.optim_cfg = model_cfg, parallel_cfg, optim_cfg
        self.device = engine_device()  # the one place the device is decided
        module = build_model(model_cfg, parallel_cfg)
        self.config = module.config
        self.optimizer = None
        if not trainable:
            module.requires_grad_(False)
            module.eval()
            self.model = [module]
            return
        ddp_cfg = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, overlap_grad_reduce=False,
            use_distributed_optimizer=optim_cfg.use_distributed_optimizer)
        ddp = DistributedDataParallel(config=self.config, ddp_config=ddp_cfg, module=module)
        self.model = [ddp]
        self.config.finalize_model_grads_func = finalize_model_grads
        self.config.no_sync_func = ddp.no_sync
        bf16 = model_cfg.params_dtype == "bf16"
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(optimizer="adam", lr=optim_cfg.lr, min_lr=optim_cfg.min_lr,
                            weight_decay=optim_cfg.weight_decay, adam_beta1=optim_cfg.adam_beta1,
                            adam_beta2=optim_cfg.adam_beta2, adam_eps=optim_cfg.adam_eps,
                            clip_grad=optim_cfg.clip_grad, bf16=bf16,
                            params_dtype=torch.bfloat16 if bf16 else torch.float32,
                            use_distributed_optimizer=optim_cfg.use_distributed_optimizer),
            self.model)
        self.step_count = 0

    @property
    def seq_multiple(self) -> int:
        """Sequence lengths must be a multiple of this: sequence parallelism splits them over TP ranks."""
        from megatron.core import parallel_state

        return parallel_state.get_tensor_model_parallel_world_size() if self.config.sequence_parallel else 1

    @property
    def module(self) -> torch.nn.Module:
        """The bare GPTModel of this rank's (only) pipeline chunk."""
        m = self.model[0]
        return m.module if hasattr(m, "module") else m

    def state_dict(self) -> dict:
        """The step counter (it drives the LR schedule); optimizer state is checkpointed by megatron."""
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = state["step_count"]

    def _set_lr(self) -> float:
        """This step's learning rate into every param group; on a CPU, also torch Adam's fused kernel
        (set here, not once: loading an optimizer checkpoint replaces the groups with the saved ones)."""
        lr = lr_at(self.optim_cfg, self.step_count)
        fused = self.device.type == "cpu" and _steps_with_torch_adam(self.optimizer)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if fused:
                group["fused"], group["foreach"] = True, False
        return lr

    def run_schedule(self, forward_step: ForwardStep, micro_batches: list, *, seq_length: int,
                     micro_batch_size: int, forward_only: bool) -> list[dict]:
        """megatron's forward-backward schedule over ``micro_batches``; returns per-micro-batch
        metric dicts (on the last pipeline stage; empty elsewhere). Each micro-batch is moved to the
        engine's device once, as the schedule draws it."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        for m in self.model:
            m.train(not forward_only)
        return get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=(to_device(mb, self.device) for mb in micro_batches), model=self.model,
            num_microbatches=len(micro_batches), seq_length=seq_length, micro_batch_size=micro_batch_size,
            forward_only=forward_only)

    def train_step(self, forward_step: ForwardStep, micro_batches: list, *, seq_length: int,
                   micro_batch_size: int) -> dict[str, Any]:
        """Zero grads, accumulate over micro-batches, reduce, clip, step. Returns metrics."""
        if self.optimizer is None:
            raise RuntimeError("train_step on an engine built with trainable=False")
        for m in self.model:
            m.zero_grad_buffer()
        self.optimizer.zero_grad()
        lr = self._set_lr()
        outputs = self.run_schedule(forward_step, micro_batches, seq_length=seq_length,
                                    micro_batch_size=micro_batch_size, forward_only=False)
        ok, grad_norm, _ = self.optimizer.step()
        self.step_count += 1
        return {"outputs": outputs, "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                "update_ok": bool(ok), "lr": lr}


def _steps_with_torch_adam(optimizer) -> bool:
    """Whether megatron's optimizer steps through torch's Adam/AdamW (no Transformer Engine or Apex
    FusedAdam). On a CPU torch's default there is the tensor-by-tensor loop, which makes temporaries
    for every step of the update; its fused CPU kernel does the same update in one pass per tensor
    (SmolLM2-135M: 0.40 s -> 0.042 s a step, at the memory bandwidth; ``benchmarks/bench_adam_cpu.py``)."""
    inner = [getattr(o, "optimizer", None) for o in getattr(optimizer, "chained_optimizers", [optimizer])]
    return all(isinstance(o, (torch.optim.Adam, torch.optim.AdamW)) for o in inner)


def last_stage_broadcast(values: Optional[list[float]], count: int) -> list[float]:
    """Share metrics computed on the last pipeline stage with every rank of the pipeline."""
    from megatron.core import parallel_state

    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return list(values or [])
    group = parallel_state.get_pipeline_model_parallel_group()
    device = collective_device(group)
    buf = torch.zeros(count, dtype=torch.float64, device=device)
    if parallel_state.is_pipeline_last_stage():
        buf[:] = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.broadcast(buf, src=parallel_state.get_pipeline_model_parallel_last_rank(), group=group)
    return buf.tolist()
