"""The one place that knows how the supported megatron-core releases differ.

r1hpc runs on two megatron-core series from one code base: 0.16 (the newest that installs on
Python 3.11) and 0.19 (Python >= 3.12, what current clusters and NVIDIA containers have). Code
elsewhere asks this module by name (:func:`features`, :func:`inference_mode`) and never compares
version numbers itself, so supporting another series means one more :data:`SUPPORTED` entry.
"""
from __future__ import annotations

import contextlib
import dataclasses
import platform
import sys
from typing import Iterator, Optional

from packaging.version import InvalidVersion, Version


@dataclasses.dataclass(frozen=True)
class Series:
    """What r1hpc needs to know about one megatron-core release series."""

    tested: str  # the release CI runs (requirements/cpu-lock*.txt)
    python: str  # the Python CI runs it on
    # inference code paths (last-token logits, flash decode) follow the process-wide
    # megatron.core.inference.utils.InferenceMode flag, not the presence of an inference context
    inference_mode_flag: bool
    # dist_checkpointing's FileSystemWriterAsync writes its buckets with threads, not forked processes
    threaded_checkpoint_writer: bool
    # filesystem_async's function that creates the writer's results queue (a multiprocessing Manager)
    results_queue_factory: str
    # moe_utils defines te_general_gemm (as None) when Transformer Engine is absent
    te_general_gemm_defined: bool
    # the DynamicInferenceEngine runs on a CPU with r1hpc.model.cpu_inference's patches (0.19's needs
    # more patch points; there rollouts on a CPU take the static path)
    dynamic_engine_cpu: bool


SUPPORTED: dict[str, Series] = {
    "0.16": Series(tested="0.16.1", python="3.11", inference_mode_flag=False, threaded_checkpoint_writer=False,
                   results_queue_factory="_get_write_results_queue", te_general_gemm_defined=False,
                   dynamic_engine_cpu=True),
    "0.19": Series(tested="0.19.2", python="3.12", inference_mode_flag=True, threaded_checkpoint_writer=True,
                   results_queue_factory="get_write_results_queue", te_general_gemm_defined=True,
                   dynamic_engine_cpu=False),
}


class MegatronVersionError(RuntimeError):
    """The installed megatron-core is not one r1hpc supports; the message says which are."""


class CheckpointVersionError(RuntimeError):
    """A checkpoint written under one megatron-core / torch does not load under the installed ones."""


class CheckpointCorruptError(RuntimeError):
    """A checkpoint file is cut short or unreadable (a copy or a save that did not finish); the
    message names the file (``r1hpc.model.weights.damaged_file``)."""


def installed_version() -> str:
    """megatron-core's version as it reports it (0.19 adds a local label such as ``0.19.2+65a6cf7``)."""
    import megatron.core

    version = getattr(megatron.core, "__version__", None)
    if not version:
        from importlib.metadata import version as dist_version

        version = dist_version("megatron-core")
    return str(version)


def release(version: Optional[str] = None) -> str:
    """The release part of a version: ``0.19.2+65a6cf7`` -> ``0.19.2``."""
    version = version or installed_version()
    try:
        return Version(version).base_version
    except InvalidVersion as e:
        raise MegatronVersionError(f"megatron-core reports an unparsable version {version!r}") from e


def supported_text() -> str:
    return ", ".join(f"{k}.x (tested: {s.tested}, Python {s.python})" for k, s in SUPPORTED.items())


def version_record() -> dict[str, str]:
    """What a checkpoint records about the stack that wrote it (checked when it fails to load elsewhere)."""
    import torch

    return {"megatron_core": installed_version(), "torch": torch.__version__, "python": platform.python_version()}


def features(version: Optional[str] = None) -> Series:
    """The :class:`Series` of ``version`` (default: the installed one); raises MegatronVersionError
    naming the supported series for any other."""
    version = version or installed_version()
    parts = release(version).split(".")
    found = SUPPORTED.get(".".join(parts[:2]))
    if found is None:
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        raise MegatronVersionError(
            f"megatron-core {version} is installed; r1hpc supports {supported_text()}. On Python {py} install "
            f"one of those (requirements/cpu-lock*.txt pins them) or pip install 'megatron-core>=0.16.1,"
            f"!=0.17.*,!=0.18.*,<0.20'")
    return found


def is_tested(version: Optional[str] = None) -> bool:
    """Whether ``version`` (default: the installed one) is a release CI runs, not just its series."""
    version = version or installed_version()
    try:
        return release(version) == features(version).tested
    except MegatronVersionError:
        return False


@contextlib.contextmanager
def inference_mode() -> Iterator[None]:
    """Mark the model as serving inference for a decoding loop. On 0.19 megatron reads this flag (not
    the inference context) to keep only the last token's logits in a prefill and to pick its inference
    kernels; without it a prefill computes full [b, L, V] logits. 0.16 needs nothing. Re-entrant: an
    inner use leaves a flag set by an engine set."""
    if not features().inference_mode_flag:
        yield
        return
    from megatron.core.inference.utils import InferenceMode

    if InferenceMode.is_active():
        yield
        return
    with InferenceMode.active():
        yield
