"""Save and load the whole state of a GRPO run (collective: every rank calls every method).

A checkpoint directory (see layout.py for naming and atomicity):

    model/        policy weights, megatron dist_checkpointing (loads at any layout: r1hpc.model.weights)
    optimizer/    megatron optimizer state (Adam moments and step per parameter, param groups)
    ranks/rank_NNNNN.pt   per rank: RNG states, trainer counters and prompt-stream position,
                  engine step counter (LR schedule), reward-scorer counters
    tokenizer.json  the run's tokenizer
    meta.json     rank 0, written last: step, finished, evals so far, metrics.jsonl length,
                  the resolved config, the parallel layout and the versions of megatron-core, torch
                  and Python that wrote it
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

from r1hpc import faults
from r1hpc.checkpoint.compat import ResumeError, current_layout
from r1hpc.checkpoint.config import CheckpointConfig
from r1hpc.checkpoint.layout import (LATEST, explain_write_errors, fsync_tree, prune, publish, read_meta,
                                    step_dir_name)
from r1hpc.checkpoint.rng import capture_rng, restore_rng
from r1hpc.model.mcore_compat import CheckpointVersionError, version_record
from r1hpc.model.weights import (load_dist_checkpoint, load_model_weights, save_dist_checkpoint, save_model_weights,
                                 sharded_model_state)

FORMAT_VERSION = 1


class CheckpointManager:
    """Saves and loads ``policy`` (Engine), ``trainer`` (GRPOTrainer) and ``scorer`` state."""

    def __init__(self, cfg: CheckpointConfig, directory: Path, *, policy, trainer, scorer, config: dict,
                 tokenizer_path: Optional[Path] = None) -> None:
        self.cfg, self.directory = cfg, Path(directory)
        self.policy, self.trainer, self.scorer = policy, trainer, scorer
        self.config, self.tokenizer_path = config, tokenizer_path
        self.rank = torch.distributed.get_rank()

    # ------------------------------------------------------------------ save
    def save(self, step: int, *, evals: list[dict], metrics_path: Path, finished: bool) -> Path:
        """Write and publish a complete checkpoint of the state as of now; returns its path."""
        tmp = self.directory / (step_dir_name(step) + ".tmp")
        final = self.directory / step_dir_name(step)
        if self.rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)
            for sub in ("optimizer", "ranks"):
                (tmp / sub).mkdir(parents=True)
        torch.distributed.barrier()
        with explain_write_errors(self.directory, f"step {step}"):
            save_model_weights(self.policy.module, tmp / "model")
            optim_state = self._optimizer_state(is_loading=False)
            save_dist_checkpoint(optim_state, tmp / "optimizer")
            torch.save({"optimizer_stepped": _has_adam_moments(optim_state), "rng": capture_rng(),
                        "trainer": self.trainer.state_dict(), "engine": self.policy.state_dict(),
                        "scorer": self.scorer.state_dict()}, tmp / "ranks" / f"rank_{self.rank:05d}.pt")
        faults.point("checkpoint.save", step)  # R1HPC_FAULT=checkpoint.save:N (crash tests)
        fsync_tree(tmp)
        torch.distributed.barrier()  # every rank's files are written and flushed
        if self.rank == 0:
            if self.tokenizer_path is not None:
                shutil.copy2(self.tokenizer_path, tmp / "tokenizer.json")
            meta = {"format_version": FORMAT_VERSION, "step": step, "finished": finished, "evals": evals,
                    "metrics_bytes": metrics_path.stat().st_size if metrics_path.exists() else 0,
                    "config": self.config, "layout": current_layout(), "versions": version_record(),
                    "saved_at": time.time()}
            publish(tmp, final, meta)
            prune(self.directory, self.cfg.keep_last)
        torch.distributed.barrier()
        return final

    def _optimizer_state(self, *, is_loading: bool) -> dict:
        return self.policy.optimizer.sharded_state_dict(sharded_model_state(self.policy.module), is_loading=is_loading)

    # ------------------------------------------------------------------ load
    def load(self, path: Path) -> dict:
        """Restore every component from ``path`` (checked with compat.check_resumable first);
        RNG states last, so nothing built afterwards consumes them. Returns meta.json."""
        meta = read_meta(path)
        own = torch.load(path / "ranks" / f"rank_{self.rank:05d}.pt", weights_only=False)
        load_model_weights(self.policy.module, path / "model")
        if own["optimizer_stepped"]:  # else Adam has no moments yet, exactly like the fresh optimizer
            self.policy.optimizer.load_state_dict(
                load_dist_checkpoint(self._optimizer_state(is_loading=True), path / "optimizer"))
        self.trainer.load_state_dict(own["trainer"])
        self.policy.load_state_dict(own["engine"])
        self.scorer.load_state_dict(own["scorer"])
        restore_rng(own["rng"])
        return meta

    def load_first(self, candidates: list[Path], say: Callable[[str], None], move_aside: bool = True) -> tuple[Path, dict]:
        """Load the first of ``candidates`` (newest first) that loads on every rank. One that does
        not (a truncated shard, a corrupt file) is reported and, with ``move_aside``, renamed
        ``<name>.unloadable`` (kept for inspection, never deleted, never retried); the next older
        one is tried."""
        for path in candidates:
            error: Optional[BaseException] = None
            try:
                meta = self.load(path)
            except CheckpointVersionError:
                raise  # not a damaged checkpoint: an older one would fail the same way
            except (Exception, CheckpointException) as e:  # a damaged checkpoint: try the previous one
                error = e
                print(f"[checkpoint] rank {self.rank}: {path} does not load: {type(e).__name__}: "
                      f"{' '.join(str(e).split())[:300]}",
                      flush=True)
            failed = torch.tensor(float(error is not None))
            torch.distributed.all_reduce(failed, op=torch.distributed.ReduceOp.MAX)
            if not failed:
                return path, meta
            say(f"[checkpoint] WARNING: {path} does not load (see above)" + (
                f"; keeping it as {path.name}.unloadable and falling back to the previous complete checkpoint"
                if move_aside else ""))
            torch.distributed.barrier()
            if self.rank == 0 and move_aside:
                aside = path.with_name(path.name + ".unloadable")
                n = 1
                while aside.exists():
                    aside, n = path.with_name(f"{path.name}.unloadable{n}"), n + 1
                os.replace(path, aside)
                if (path.parent / LATEST).is_file() and (path.parent / LATEST).read_text().strip() == path.name:
                    (path.parent / LATEST).unlink()
            torch.distributed.barrier()
        raise ResumeError("no checkpoint loads: " + ", ".join(str(p) for p in candidates)
                          + (" (each moved aside as .unloadable)" if move_aside else "")
                          + "; start over with checkpoint.resume=none")


def _has_adam_moments(state: dict) -> bool:
    """Whether a sharded optimizer state holds Adam's moments (created at its first step). Loading
    one without them would ask the checkpoint for tensors it never had."""
    from megatron.core.dist_checkpointing import ShardedTensor
    from megatron.core.dist_checkpointing.dict_utils import nested_values

    return any(isinstance(v, ShardedTensor) and "exp_avg" in v.key for v in nested_values(state))

