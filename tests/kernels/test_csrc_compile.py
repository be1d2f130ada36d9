"""Every CUDA source in csrc/ compiles for Hopper with plain nvcc: the kernels are torch-free (the
torch binding is a separate .cpp that only a CUDA torch can build), so CI checks them without a
GPU and without CUDA torch. Flags as setup.py's CUDA extension, warnings as errors."""
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[2] / "csrc"
NVCC = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"


@pytest.mark.skipif(not Path(NVCC).is_file(), reason="nvcc not found (PATH, /usr/local/cuda/bin)")
@pytest.mark.parametrize("source", sorted(p.name for p in CSRC.glob("*.cu")))
def test_cuda_source_compiles_for_sm90a(tmp_path, source):
    cmd = [NVCC, "-c", "-arch=sm_90a", "-O3", "--fmad=false", "-std=c++17", "-Werror", "all-warnings",
           "-Xptxas", "-warn-spills", f"-I{CSRC}", str(CSRC / source), "-o", str(tmp_path / "out.o")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    assert (tmp_path / "out.o").stat().st_size > 0
