"""Run an R1-Zero recipe end to end and record its result: held-out pass@1 before and after GRPO
(overall and per task), GRPO wall time and steps per minute, pretraining time, and the exact
command, as JSON in benchmarks/results/.

    python benchmarks/run_r1zero_recipe.py configs/tiny_r1zero.yaml --out tiny_r1zero_cpu
    python benchmarks/run_r1zero_recipe.py configs/tiny_r1zero.yaml --nproc 2 --out tiny_r1zero_tp2_cpu \\
        parallel.tensor_model_parallel_size=2

With ``--nproc`` > 1 the job is launched with torchrun. The run directory (metrics.jsonl, curves.png,
summary.json) is the one the recipe names; its summary is copied into the result.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from r1hpc.run_config import load_run_config

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--nproc", type=int, default=1, help="ranks on this machine (torchrun)")
    parser.add_argument("--out", required=True, help="result name: benchmarks/results/<out>.json")
    parser.add_argument("--note", default="", help="free text stored with the result")
    args = parser.parse_intermixed_args()

    cfg = load_run_config(args.config, args.overrides)  # fail on a bad key before spending minutes
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}"] if args.nproc > 1 else []
    command = [sys.executable, *launcher, "-m", "r1hpc.cli", "train", args.config, *args.overrides]
    device = f"CPU ({os.cpu_count()} cores, {platform.machine()}), load average {os.getloadavg()[0]:.1f} at start"
    print("$", shlex.join(command), flush=True)
    t0 = time.perf_counter()
    subprocess.run(command, check=True)
    summary = json.loads((Path(cfg.run.output_dir) / cfg.run.name / "summary.json").read_text())
    result = {"device": device, "config": args.config, "command": shlex.join(["python", *command[1:]]),
              "note": args.note, "wall_s_total": time.perf_counter() - t0, **summary}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{args.out}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"held-out pass@1 {summary['pass_at_1_before']:.3f} -> {summary['pass_at_1_after']:.3f} "
          f"({summary['grpo_steps']} GRPO steps, {summary['grpo_wall_s'] / 60:.1f} min); wrote {path}")


if __name__ == "__main__":
    main()
