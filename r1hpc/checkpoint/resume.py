"""Which checkpoint a run starts from (``checkpoint.resume``), decided identically on every rank
from the shared checkpoint directory."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Optional

from r1hpc.checkpoint.compat import ResumeError
from r1hpc.checkpoint.layout import newest_complete, read_meta, scan


def choose_checkpoint(resume: str, directory: Path, say: Callable[[str], None]) -> Optional[Path]:
    """The checkpoint to resume from, or None for a fresh start. "auto" skips incomplete saves
    with a warning; an explicit path must be a complete checkpoint."""
    if resume == "none":
        return None
    if resume != "auto":
        path = Path(resume)
        try:
            read_meta(path)
        except FileNotFoundError as e:
            raise ResumeError(f"checkpoint.resume={resume}: {e}") from None
        return path
    best, skipped = newest_complete(directory)
    for f in skipped:
        say(f"[checkpoint] WARNING: skipping incomplete checkpoint {f.path} (a save that did not finish)")
    if best is None:
        say(f"[checkpoint] no complete checkpoint in {directory}: starting from the beginning")
        return None
    return best.path


def resume_candidates(resume: str, directory: Path, say: Callable[[str], None]) -> list[Path]:
    """The checkpoints to try, in order: ``choose_checkpoint``'s pick, then (for "auto") each older
    complete one, the fallbacks when a newer one does not load. Empty for a fresh start."""
    first = choose_checkpoint(resume, directory, say)
    if first is None:
        return []
    if resume != "auto":
        return [first]
    return [f.path for f in reversed(scan(directory)) if f.complete and f.step <= int(first.name.split("_")[1])]


def check_fresh_start(directory: Path, overwrite: bool) -> None:
    """A fresh start where an earlier run's complete checkpoints lie would delete them: refused
    unless ``checkpoint.overwrite`` (checked before anything else runs, so a refusal costs nothing)."""
    complete = [f for f in scan(directory) if f.complete]
    if complete and not overwrite:
        raise ResumeError(f"{directory} holds {len(complete)} checkpoint(s) of an earlier run (newest "
                          f"{complete[-1].path.name}) and checkpoint.resume=none would delete them: continue it "
                          "with checkpoint.resume=auto, start over with checkpoint.overwrite=true, or pick "
                          "another run.name")


def clear_stale(directory: Path, rank0: bool, say: Callable[[str], None]) -> None:
    """A fresh start in a directory that holds an earlier run's checkpoints removes them (only with
    ``checkpoint.overwrite``, see ``check_fresh_start``, or incomplete saves): mixing two runs'
    checkpoints would make a later ``resume=auto`` load the wrong one."""
    stale = scan(directory)
    if stale and rank0:
        say(f"[checkpoint] fresh start: removing {len(stale)} checkpoint(s) of an earlier run in {directory}")
        for f in stale:
            shutil.rmtree(f.path, ignore_errors=True)
        (directory / "latest").unlink(missing_ok=True)
