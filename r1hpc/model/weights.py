"""Save and load model weights with megatron's distributed checkpointing, across parallel layouts.

A checkpoint written at one TP/PP/EP layout loads at another (megatron reshards through
``sharded_state_dict``), so a base model pretrained at TP=1 starts a GRPO run at TP=2, and the
reference policy is loaded from the same files as the policy.

Every checkpoint directory written here also holds ``versions.json`` (megatron-core, torch, Python of
the writer), so a checkpoint that does not load under another megatron-core says which two met.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import torch
from packaging.version import Version

from r1hpc.model.mcore_compat import CheckpointCorruptError, CheckpointVersionError, release, version_record
from r1hpc.model.provider import unwrap

VERSIONS_FILE = "versions.json"


def _chunks(model) -> list:
    return model if isinstance(model, (list, tuple)) else [model]


def sharded_model_state(model) -> dict:
    chunks = [unwrap(m) for m in _chunks(model)]
    if len(chunks) == 1:
        return chunks[0].sharded_state_dict(prefix="model.")
    return {k: v for i, m in enumerate(chunks) for k, v in m.sharded_state_dict(prefix=f"model{i}.").items()}


def save_model_weights(model, directory: str | Path) -> None:
    """Collective: every rank calls it; each writes its own shards."""
    directory = Path(directory)
    if torch.distributed.get_rank() == 0:
        directory.mkdir(parents=True, exist_ok=True)
    torch.distributed.barrier()
    save_dist_checkpoint(sharded_model_state(model), directory)


def load_model_weights(model, directory: str | Path, *, strict: bool = True) -> None:
    """Collective: fill ``model`` (any supported layout) from a checkpoint written by save_model_weights."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    directory = Path(directory)
    try:
        is_checkpoint = dist_checkpointing.check_is_distributed_checkpoint(str(directory))
    except ValueError as error:  # metadata.json cut short
        raise _corrupt(directory, error) from error
    if not is_checkpoint:
        raise FileNotFoundError(f"{directory}: not a megatron distributed checkpoint (no metadata.json)")
    state = load_dist_checkpoint(sharded_model_state(model), directory,
                                 strict=StrictHandling.RAISE_ALL if strict else StrictHandling.LOG_UNEXPECTED)
    chunks = [unwrap(m) for m in _chunks(model)]
    if len(chunks) == 1:
        chunks[0].load_state_dict(_strip(state, "model."), strict=False)
    else:
        for i, m in enumerate(chunks):
            m.load_state_dict(_strip(state, f"model{i}."), strict=False)


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def save_dist_checkpoint(state: dict, directory: Path) -> None:
    """Collective: megatron's save of a sharded state into the (existing, empty) ``directory``, then
    rank 0 records the versions that wrote it."""
    from megatron.core import dist_checkpointing

    dist_checkpointing.save(state, str(directory))
    if torch.distributed.get_rank() == 0:
        (Path(directory) / VERSIONS_FILE).write_text(json.dumps(version_record(), indent=1) + "\n")
    torch.distributed.barrier()


def written_versions(directory: Path) -> dict[str, str] | None:
    """The versions recorded by save_dist_checkpoint; None for a checkpoint from before they were recorded."""
    path = Path(directory) / VERSIONS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def load_dist_checkpoint(state: dict, directory: Path, **kwargs: Any) -> dict:
    """megatron's load; a failure on a checkpoint written under another megatron-core or torch
    raises CheckpointVersionError naming both stacks and the underlying error."""
    from megatron.core import dist_checkpointing
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    try:
        return dist_checkpointing.load(state, str(directory), **kwargs)
    except (Exception, CheckpointException) as error:
        if damaged_file(directory):
            raise _corrupt(directory, error) from error
        written, here = written_versions(directory), version_record()
        if not written or all(written.get(k) == here[k] for k in ("megatron_core", "torch")):
            raise
        raise CheckpointVersionError(_version_error_text(directory, written, here, error)) from error


def damaged_file(directory: Path) -> str | None:
    """``"<file>: <what is wrong>"`` for the first file of a checkpoint that is cut short or
    unreadable, else None. Run only after a load failed (it reads the index again)."""
    from torch.distributed.checkpoint import FileSystemReader

    for name in ("metadata.json", VERSIONS_FILE):
        path = directory / name
        if path.is_file():
            try:
                json.loads(path.read_text())
            except ValueError as e:  # UnicodeDecodeError is one
                return f"{path}: not valid JSON ({e})"
    common = directory / "common.pt"
    if common.is_file() and not zipfile.is_zipfile(common):
        return f"{common}: not a complete torch archive"
    index = directory / ".metadata"
    if not index.is_file():
        return None
    try:
        metadata = FileSystemReader(str(directory)).read_metadata()
    except Exception as e:
        return f"{index}: unreadable ({type(e).__name__}: {e})"
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        path = directory / name
        if not path.is_file():
            return f"{path}: missing"
        if path.stat().st_size < size:
            return f"{path}: truncated ({path.stat().st_size} bytes; the checkpoint's index needs {size})"
    return None


def _corrupt(directory: Path, error: BaseException) -> CheckpointCorruptError:
    found = damaged_file(directory) or f"{directory / 'metadata.json'}: {type(error).__name__}: {error}"
    return CheckpointCorruptError(" ".join(f"{found}: the checkpoint {directory} is truncated or corrupt (a copy "
                                           "or a save that did not finish); copy or convert it again".split()))


def _version_error_text(directory: Path, written: dict, here: dict, error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]  # a CheckpointException holds tracebacks
    older = Version(release(here["megatron_core"])) < Version(release(written["megatron_core"]))
    return (f"{directory} was written with megatron-core {written['megatron_core']} (torch {written.get('torch')}, "
            f"Python {written.get('python')}) and does not load with megatron-core {here['megatron_core']} (torch "
            f"{here['torch']}, Python {here['python']}): {type(error).__name__}: {lines[-1] if lines else ''}. "
            + ("A newer megatron-core's checkpoint format need not be readable by an older one (0.16 cannot read "
               "0.19's; 0.19 reads 0.16's). " if older else "")
            + "Load it where it was written, or convert it there to Hugging Face (r1hpc convert megatron-to-hf) "
              "and import that here")
