"""Fault injection for crash tests, through one environment variable: ``R1HPC_FAULT`` lists the
points (comma-separated) at which this process kills itself with SIGKILL, as a power cut or the
OOM killer would (no cleanup, no exit handlers). Unset, as in every real run, a point costs one
environment lookup. Points:

    checkpoint.save:N        the save of GRPO step N, after every shard and the rank file are
                             written, before anything is published (docs/checkpointing.md)
    disagg.batch_write:N     a rollout worker, half-way through writing its N-th batch (the file
                             cut to half its length and flushed; docs/disaggregated.md)

Set it only in the environment of the process that should die.
"""
from __future__ import annotations

import os
import signal
from typing import IO, Optional

ENV = "R1HPC_FAULT"


def armed(point: str, n: int) -> bool:
    """Whether ``R1HPC_FAULT`` asks this process to die at ``point`` the ``n``-th time (``point:n``)."""
    return f"{point}:{n}" in os.environ.get(ENV, "").split(",")


def crash(half_written: Optional[IO[bytes]] = None) -> None:
    """SIGKILL this process; ``half_written``: first cut that file to half its length and flush it."""
    if half_written is not None:
        half_written.truncate(max(1, half_written.tell() // 2))
        half_written.flush()
        os.fsync(half_written.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


def point(name: str, n: int) -> None:
    """Die here when ``R1HPC_FAULT`` names ``name:n``."""
    if armed(name, n):
        crash()
