"""The checkpoint directory on disk, and the file operations that make a save atomic.

    <directory>/step_00000012/          a complete checkpoint (renamed into place last)
    <directory>/step_00000014.tmp/      a save in progress, or one that died: never loaded
    <directory>/latest                  text: the name of the newest complete checkpoint

A checkpoint is complete when its directory has its final name and holds ``meta.json``; both are
true only after every rank wrote and flushed its files, so a crash at any point leaves either the
previous complete checkpoint or a ``.tmp`` directory that resume skips with a warning.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterator, Optional

META = "meta.json"
LATEST = "latest"
_NAME = re.compile(r"^step_(\d{8})(\.tmp)?$")


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (a full disk, a quota, a read-only filesystem)."""


@contextlib.contextmanager
def explain_write_errors(directory: Path, what: str) -> Iterator[None]:
    """Turn a failed write (an ``OSError``, or torch's ``inline_container`` ``RuntimeError`` that
    hides ENOSPC) into one line naming the directory and its free space."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        try:
            free = f"{shutil.disk_usage(directory).free / 2**30:.2f} GiB free there"
        except OSError:
            free = "free space unknown"
        detail = " ".join(str(e).split())[:200]
        raise CheckpointWriteError(f"checkpoint.directory {directory}: writing {what} failed ({free}): "
                                   f"{type(e).__name__}: {detail}") from e


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` to stable storage."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fsync_file(Path(dirpath) / name)
        fsync_file(Path(dirpath))


def write_atomic(path: Path, text: str) -> None:
    """Write a small text file so that readers see the old content or the new, never a torn one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_file(path.parent)


@dataclasses.dataclass(frozen=True)
class Found:
    path: Path
    step: int
    complete: bool


def scan(directory: Path) -> list[Found]:
    """Every checkpoint directory under ``directory``, oldest step first."""
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        m = _NAME.match(child.name)
        if m and child.is_dir():
            complete = m.group(2) is None and (child / META).is_file()
            found.append(Found(child, int(m.group(1)), complete))
    return sorted(found, key=lambda f: (f.step, f.complete))


def newest_complete(directory: Path) -> tuple[Optional[Found], list[Found]]:
    """The newest complete checkpoint (None if there is none) and the incomplete ones newer than it."""
    found = scan(directory)
    complete = [f for f in found if f.complete]
    best = complete[-1] if complete else None
    skipped = [f for f in found if not f.complete and (best is None or f.step >= best.step)]
    return best, skipped


def read_meta(path: Path) -> dict:
    meta = path / META
    if not meta.is_file():
        raise FileNotFoundError(f"{path}: not a complete checkpoint (no {META}; an interrupted save?)")
    return json.loads(meta.read_text())


def publish(tmp: Path, final: Path, meta: dict) -> None:
    """Rank 0, after every rank flushed its files: write meta.json, rename into place, point ``latest``."""
    write_atomic(tmp / META, json.dumps(meta, indent=2))
    if final.exists():  # the same step saved again (e.g. a run extended after it finished)
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_file(final.parent)
    write_atomic(final.parent / LATEST, final.name + "\n")


def model_weights_dir(path: str | Path) -> Path:
    """The megatron weights folder ``path`` names: the folder itself, a checkpoint's ``model/``, or,
    for a checkpoint directory, the ``model/`` of the checkpoint its ``latest`` points to (so a later
    stage can name an RL run's checkpoints before they exist)."""
    path = Path(path)
    if (path / LATEST).is_file():
        path = path / (path / LATEST).read_text().strip()
    if (path / META).is_file() and (path / "model").is_dir():
        return path / "model"
    return path


def prune(directory: Path, keep_last: int) -> list[Path]:
    """Delete complete checkpoints beyond the newest ``keep_last`` and stale ``.tmp`` saves older
    than the newest complete one. Returns what was removed."""
    found = scan(directory)
    complete = [f for f in found if f.complete]
    if not complete:
        return []
    newest = complete[-1].step
    doomed = [f.path for f in complete[:-keep_last]] + [f.path for f in found if not f.complete and f.step < newest]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed
