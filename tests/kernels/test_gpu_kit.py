"""scripts/gpu_kit.sh: `prepare` fetches the cp312 wheels the bare GPU image lacks (under 60 MiB) and
`run --dry-run` checks the plan without CUDA, recording FP8 as not run. The real `prepare` needs the
package index; without it the dry runs are checked alone."""
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "scripts" / "gpu_kit.sh"


def _kit(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(KIT), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_prepare_dry_run_names_the_pinned_wheels():
    proc = _kit("prepare", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "megatron-core==0.19.2" in proc.stdout and "--python-version 3.12" in proc.stdout
    assert "would run: python3 -m pip download" in proc.stdout


def test_prepare_then_run_dry_run_checks_the_plan(tmp_path):
    prepared = _kit("prepare", timeout=300)
    dry = _kit("run", str(tmp_path / "out"), "--dry-run")
    assert "benchmarks/gpu_check.py --quick" in dry.stdout and "pytest -m gpu" in dry.stdout
    assert "FP8: not run: Transformer Engine unavailable" in dry.stdout
    if prepared.returncode == 0:  # the index answered: every wheel is there and under the limit
        assert "MiB in" in prepared.stdout and dry.returncode == 0, dry.stdout
    else:
        assert "(run prepare)" in dry.stdout and dry.returncode == 1
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
