"""Fault injection (r1hpc/faults.py): a process dies by SIGKILL exactly at the points R1HPC_FAULT names."""
import os
import signal
import subprocess
import sys

import pytest

from r1hpc import faults

PROGRAM = "from r1hpc import faults\nfor n in (1, 2, 3):\n    faults.point('checkpoint.save', n)\n    print(n, flush=True)"


@pytest.mark.parametrize("spec, printed, rc", [
    ("", "1 2 3", 0),
    ("checkpoint.save:2", "1", -signal.SIGKILL),
    ("disagg.batch_write:2,checkpoint.save:3", "1 2", -signal.SIGKILL),
    ("checkpoint.save:22", "1 2 3", 0),
])
def test_a_process_dies_only_at_the_named_point(spec, printed, rc):
    proc = subprocess.run([sys.executable, "-c", PROGRAM], env={**os.environ, faults.ENV: spec},
                          capture_output=True, text=True, timeout=60)
    assert (" ".join(proc.stdout.split()), proc.returncode) == (printed, rc), proc.stderr


def test_armed_reads_the_environment(monkeypatch):
    monkeypatch.setenv(faults.ENV, "disagg.batch_write:2")
    assert faults.armed("disagg.batch_write", 2)
    assert not faults.armed("disagg.batch_write", 1) and not faults.armed("checkpoint.save", 2)
    monkeypatch.delenv(faults.ENV)
    assert not faults.armed("disagg.batch_write", 2)
