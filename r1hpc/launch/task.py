"""What a submitit job runs on each task: one ``r1hpc`` sub-command in a child process.

The child owns the training loop and its ``PreemptionGuard`` (r1hpc.checkpoint.preemption): on
SIGUSR2/SIGTERM every rank agrees at a step boundary, saves, and exits ``EXIT_CODE_REQUEUE``. Slurm
signals every process of the step, so this wrapper gets the signal too: submitit calls ``checkpoint`` (rank 0),
which waits for the child to finish its save before submitit requeues the job (requeueing earlier
would kill the save). The requeued job runs the same command, which resumes (``--resume auto``).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Optional

import submitit

from r1hpc.checkpoint.preemption import EXIT_CODE_REQUEUE

SAVE_GRACE_S = 110  # --signal=USR2@120 leaves this long for the save before Slurm's kill


class StepFailed(RuntimeError):
    pass


class R1hpcStep(submitit.helpers.Checkpointable):
    """``python -m r1hpc.cli <args>`` on this task; returns ``result`` (e.g. a shard file) on success."""

    def __init__(self, args: list[str], result: Optional[str] = None) -> None:
        self.args = list(args)
        self.result = result
        self._proc: Optional[subprocess.Popen] = None

    def __call__(self) -> Optional[str]:
        self._proc = subprocess.Popen([sys.executable, "-m", "r1hpc.cli", *self.args], env=os.environ.copy())
        # poll, not wait(): a blocking wait holds Popen's lock and the signal handler
        # (checkpoint below) must be able to poll the same child
        while self._proc.poll() is None:
            time.sleep(0.5)
        rc = self._proc.returncode
        if rc == EXIT_CODE_REQUEUE:
            # saved for a requeue that this job's rank 0 (or Slurm itself) is carrying out:
            # stay alive until the requeue ends this process, so the job does not finish early
            time.sleep(SAVE_GRACE_S + 60)
            raise StepFailed(f"r1hpc {' '.join(self.args)} saved for a requeue, but none came")
        if rc != 0:
            raise StepFailed(f"r1hpc {' '.join(self.args)} exited with code {rc}")
        return self.result

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on USR2 (rank 0): let the child save, then requeue the same command."""
        deadline = time.monotonic() + SAVE_GRACE_S
        while self._proc is not None and self._proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        fresh = R1hpcStep(self.args, self.result)
        return submitit.helpers.DelayedSubmission(fresh)

    def __getstate__(self):
        return {"args": self.args, "result": self.result}

    def __setstate__(self, state):
        self.__init__(state["args"], state["result"])
