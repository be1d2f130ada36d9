"""Stop cleanly when the scheduler asks: Slurm sends SIGUSR2 (``--signal=USR2@...``) or SIGTERM
before killing a job. The handler only sets a flag (nothing else is safe inside a signal handler
while collectives may be in flight); the training loop asks ``should_stop()`` at each step
boundary, every rank agrees (all-reduce MAX), the run saves a complete checkpoint and exits with
``EXIT_CODE_REQUEUE`` so the job script can requeue it (docs/checkpointing.md)."""
from __future__ import annotations

import signal

EXIT_CODE_REQUEUE = 75  # EX_TEMPFAIL: "try again later"
SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
_early: list[int] = []


def catch_signals_early() -> None:
    """Flag-only handlers from the first line of ``r1hpc train``: a requeued job that starts near its
    time limit can get USR2 while it is still importing, and the default action (terminate) would
    fail the job instead of requeueing it. ``PreemptionGuard`` takes over what was caught."""
    for s in SIGNALS:
        signal.signal(s, lambda signum, frame: _early.append(signum))


class PreemptionGuard:
    """Installs flag-only handlers for SIGUSR2 and SIGTERM; ``uninstall`` puts the old ones back."""

    def __init__(self, signals=SIGNALS) -> None:
        self.received: int | None = _early[-1] if _early else None
        self._previous = {s: signal.signal(s, self._handle) for s in signals}

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def should_stop(self) -> bool:
        """Collective over the default group: True on every rank when any rank got a signal."""
        import torch  # not at module level: catch_signals_early runs before the heavy imports

        from r1hpc.device import collective_device

        flag = torch.tensor(float(self.received is not None), device=collective_device())
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag)

    def uninstall(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
