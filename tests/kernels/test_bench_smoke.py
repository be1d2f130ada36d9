import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_grpo_loss.py"


def test_benchmark_smoke_runs(tmp_path):
    """The CPU smoke configuration runs end to end and writes JSON naming the device (torch.compile
    is left out here only to keep the suite fast; the smoke run itself includes it)."""
    out = tmp_path / "r.json"
    env = {**os.environ, "TRITON_INTERPRET": "1"}  # --smoke runs on CPU even where CUDA exists
    proc = subprocess.run([sys.executable, str(BENCH), "--smoke", "--out", str(out),
                           "--impls", "eager_reference", "ours_torch", "ours_triton"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["smoke"] and data["device"].startswith("cpu") and "GPU" in data["note"]
    rows = {r["impl"]: r for r in data["results"]}
    assert rows.keys() == {"eager_reference", "ours_torch", "ours_triton"}
    for name in rows:
        assert rows[name]["fwd_bwd"]["ms"] > 0, rows[name]
