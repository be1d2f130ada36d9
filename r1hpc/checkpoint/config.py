"""The ``checkpoint`` section of a run's configuration."""
from __future__ import annotations

import dataclasses
from typing import Optional

from r1hpc.config import ConfigError


@dataclasses.dataclass
class CheckpointConfig:
    """When and where the GRPO run saves, how many it keeps, and whether it resumes.

    The last step of a run and a preemption signal always save; ``save_every`` adds saves on a
    schedule. ``resume``: "none" (a fresh start), "auto" (the newest complete checkpoint in
    ``directory``, or a fresh start when there is none) or the path of one checkpoint. A fresh start
    in a directory holding complete checkpoints is refused unless ``overwrite`` (which deletes them)."""

    directory: Optional[str] = None  # None: <run dir>/checkpoints
    save_every: int = 50
    keep_last: int = 2
    resume: str = "none"
    overwrite: bool = False

    def validate(self) -> None:
        if self.save_every < 0:
            raise ConfigError(f"key 'save_every' must be >= 0 (0: only the last step and preemption), got {self.save_every}")
        if self.keep_last < 1:
            raise ConfigError(f"key 'keep_last' must be >= 1, got {self.keep_last}")
        if not self.resume or "\0" in self.resume:
            raise ConfigError("key 'resume' must be 'none', 'auto' or the path of a checkpoint")
