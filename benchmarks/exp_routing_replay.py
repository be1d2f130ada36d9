"""Routing replay (R3) off and on, on an R1-Zero MoE recipe, with several RL seeds from one base:
the rollout/trainer mismatch each run saw and the held-out gain it reached, as JSON in
benchmarks/results/.

    python benchmarks/exp_routing_replay.py configs/tiny_r1zero.yaml --seeds 0 1 2 --steps 30 \\
        --out routing_replay_tiny-moe_bf16_cpu model.params_dtype=bf16

Every run starts from the same base (the first run pretrains it into ``<output_dir>/<out>/base``,
the others reuse it through ``pretrain.base_dir``) and runs a fixed number of GRPO steps (no time
limit, so a slower setting is not cut short); ``grpo.seed`` varies the prompts and the draws.
Per run: held-out pass@1 before and after, and over its steps the mean |log-prob gap| between
rollout and trainer, its largest value, the sequence KL estimate and (replay off) the router
agreement. In fp32 on a CPU the KV-cached rollout and the trainer's recompute route alike, so
replay has nothing to fix there; bf16 is where they part.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from r1hpc.run_config import load_run_config

RESULTS = Path(__file__).resolve().parent / "results"
MISMATCH = {"logp_gap_mean": ("sampling/sampling_logp_difference/mean", statistics.fmean),
            "logp_gap_max": ("sampling/sampling_logp_difference/max", max),
            "seq_kl_mean": ("rollout_corr/seq_kl", statistics.fmean),
            "router_agreement_mean": ("rollout_corr/router_agreement", statistics.fmean),
            "router_agreement_min": ("rollout_corr/router_agreement", min)}


def run_one(config: str, overrides: list[str], run_dir: Path) -> tuple[str, dict]:
    """Train one run; its command and its figures (summary and mismatch over the steps)."""
    command = [sys.executable, "-m", "r1hpc.cli", "train", config, *overrides]
    print("$", shlex.join(command), flush=True)
    t0 = time.perf_counter()
    subprocess.run(command, check=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    out = {"pass_at_1_before": summary["pass_at_1_before"], "pass_at_1_after": summary["pass_at_1_after"],
           "gain": summary["pass_at_1_after"] - summary["pass_at_1_before"],
           "per_task_after": summary.get("per_task_after"), "grpo_steps": summary["grpo_steps"],
           "wall_s": time.perf_counter() - t0}
    for name, (key, reduce) in MISMATCH.items():
        values = [s[key] for s in steps if key in s]
        out[name] = reduce(values) if values else None
    return shlex.join(["python", *command[1:]]), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="grpo.seed of the repeats")
    parser.add_argument("--steps", type=int, default=30, help="GRPO steps per run")
    parser.add_argument("--out", required=True, help="result name: benchmarks/results/<out>.json")
    args = parser.parse_intermixed_args()

    cfg = load_run_config(args.config, args.overrides)  # fail on a bad key before spending minutes
    root = Path(cfg.run.output_dir) / args.out
    device = f"CPU ({os.cpu_count()} cores, {platform.machine()}), load average {os.getloadavg()[0]:.1f} at start"
    runs = {}
    for seed in args.seeds:
        for replay in ("off", "rollout"):
            name = f"replay_{replay}_seed{seed}"
            overrides = [*args.overrides, f"run.output_dir={root}", f"run.name={name}", f"pretrain.base_dir={root / 'base'}",
                         f"grpo.seed={seed}", f"routing.replay={replay}", f"grpo.steps={args.steps}",
                         "grpo.time_limit_minutes=null", f"grpo.eval_every={args.steps}"]
            command, runs[name] = run_one(args.config, overrides, root / name)
            runs[name]["command"] = command
    by_mode = {}
    for replay in ("off", "rollout"):
        gains = [r["gain"] for n, r in runs.items() if n.startswith(f"replay_{replay}_")]
        gaps = [r["logp_gap_mean"] for n, r in runs.items() if n.startswith(f"replay_{replay}_")]
        by_mode[replay] = {"gain_mean": statistics.fmean(gains), "gain_std": statistics.stdev(gains) if len(gains) > 1
                           else 0.0, "logp_gap_mean": statistics.fmean(g for g in gaps if g is not None)}
    result = {"device": device, "command": shlex.join(["python", "benchmarks/exp_routing_replay.py", *sys.argv[1:]]),
              "config": args.config, "overrides": args.overrides, "seeds": args.seeds,
              "grpo_steps": args.steps, "by_replay": by_mode, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{args.out}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    for replay, m in by_mode.items():
        print(f"replay {replay}: held-out gain {m['gain_mean']:+.3f} +- {m['gain_std']:.3f}, "
              f"mean |log-prob gap| {m['logp_gap_mean']:.2e}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
