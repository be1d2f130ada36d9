"""benchmarks/gpu_check.py: without CUDA it says so and writes nothing; with CUDA its sampler check
(the CUDA build of csrc/ against the torch reference) passes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "benchmarks" / "gpu_check.py"


def test_without_cuda_it_exits_with_a_clear_message(tmp_path):
    out = tmp_path / "r.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no device, even on a GPU node
    proc = subprocess.run([sys.executable, str(CHECK), "--out", str(out)], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "gpu_check: no CUDA device is visible" in proc.stderr and "nothing was run" in proc.stderr
    assert not out.exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sampler_check_passes_on_gpu(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(CHECK), "--quick", "--only", "sampler", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    report = json.loads(out.read_text())
    assert report["device"] == torch.cuda.get_device_name()
    assert proc.returncode == 0, json.dumps(report["checks"], indent=1)[-4000:]


def test_benchmarks_never_import_tests():
    """Benchmarks run where the tests are not installed (a GPU node, a wheel): r1hpc is their library."""
    import ast

    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "tests" or n.startswith("tests.") for n in names), (path.name, names)
