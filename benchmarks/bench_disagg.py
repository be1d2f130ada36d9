"""Colocated versus disaggregated GRPO: trainer idle fraction and samples per second.

The tiny recipe (configs/tiny_r1zero.yaml) from one shared base, with response lengths made
deliberately uneven: temperature 1.3 over a task mix whose answers run from ~20 tokens to the
96-token cap, so each rollout batch waits on its longest rows (the long tail). Three runs of
``--steps`` GRPO steps each:

- colocated: one process rolls out, then trains. Its trainer is "idle" (not training) for the
  whole rollout + reward phase;
- disaggregated, max_staleness 0: trainer + ``--workers`` rollout workers; the trainer waits for
  each step's batch (same batches as colocated);
- disaggregated, max_staleness 1 (+ truncated IS, cap 2): workers sample step t+1 while the
  trainer trains on step t.

Idle fraction = time the trainer spent not training / GRPO wall time (sum of step times); samples/s
= G x prompts x steps / that wall time. Every process runs one thread: on a 2-core machine the
disaggregated runs put the trainer and one worker on a core each, the colocated run gets 2 threads
(``--colocated-threads``). Writes benchmarks/results/disagg_<device>.json.

    python benchmarks/bench_disagg.py --steps 12 --workers 1
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/tiny_r1zero.yaml")


def _run(args: list[str], threads: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "SLURM_", "MASTER_"))}
    env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.Popen([sys.executable, "-m", "r1hpc.cli", *args], cwd=ROOT, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _steps(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "reward/mean" in r]


def _summary(run_dir: Path, samples_per_step: int, disagg: bool) -> dict:
    rows = _steps(run_dir)[1:]  # the first step pays process start-up and first weight loads
    wall = sum(r["timing/step_s"] for r in rows)
    idle = sum(r["disagg/idle_s"] if disagg else r["timing/rollout_reward_s"] for r in rows)
    out = {"steps_measured": len(rows), "grpo_wall_s": wall, "trainer_idle_frac": idle / wall,
           "samples_per_s": samples_per_step * len(rows) / wall,
           "response_length_mean": sum(r["response_length/mean"] for r in rows) / len(rows),
           "response_length_max": max(r["response_length/max"] for r in rows),
           "clip_ratio": sum(r["response_length/clip_ratio"] for r in rows) / len(rows),
           "reward_mean": sum(r["reward/mean"] for r in rows) / len(rows)}
    if disagg:
        out["staleness_mean"] = sum(r["disagg/staleness_mean"] for r in rows) / len(rows)
        out["publish_s_mean"] = sum(r["disagg/publish_s"] for r in rows) / len(rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--colocated-threads", type=int, default=2)
    ap.add_argument("--out", default="/tmp/r1hpc_bench_disagg")
    ap.add_argument("--base", help="an existing base of the tiny recipe (default: pretrain one into --out)")
    ap.add_argument("--temperature", type=float, default=1.3)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = args.base or str(out / "base")
    common = [f"run.output_dir={out}", f"pretrain.base_dir={base}", f"grpo.steps={args.steps}", "grpo.eval_every=0",
              "grpo.time_limit_minutes=null", "eval.num_problems=8", "eval.samples_per_problem=1",
              f"rollout.temperature={args.temperature}"]
    subprocess.run([sys.executable, "-m", "r1hpc.cli", "pretrain", CONFIG, *common], cwd=ROOT, check=True)
    G, P = 8, 32  # the recipe's rollout.group_size and prompts_per_step
    results = {}

    p = _run(["train", CONFIG, *common, "run.name=colocated"], args.colocated_threads, out / "colocated.log")
    assert p.wait() == 0, (out / "colocated.log").read_text()[-3000:]
    results["colocated"] = _summary(out / "colocated", G * P, disagg=False)

    for staleness in (0, 1):
        name = f"disagg_s{staleness}"
        extra = [f"run.name={name}", f"disagg.max_staleness={staleness}"] + (["algo.tis_cap=2.0"] if staleness else [])
        workers = [_run(["rollout-worker", CONFIG, *common, *extra, "--worker-id", f"w{i}"], 1,
                        out / f"{name}-w{i}.log") for i in range(args.workers)]
        trainer = _run(["train", CONFIG, *common, *extra, "disagg.enabled=true"], 1, out / f"{name}.log")
        assert trainer.wait() == 0, (out / f"{name}.log").read_text()[-3000:]
        for w in workers:
            w.wait(timeout=120)
        results[name] = _summary(out / name, G * P, disagg=True)

    for name, r in results.items():
        print(f"{name:12s} trainer idle {100 * r['trainer_idle_frac']:5.1f}%  {r['samples_per_s']:6.1f} samples/s  "
              f"response length mean {r['response_length_mean']:.0f} max {r['response_length_max']:.0f}")
    device = f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    record = {"device": device, "command": "python benchmarks/bench_disagg.py " + " ".join(sys.argv[1:]),
              "config": "configs/tiny_r1zero.yaml", "workers": args.workers, "steps": args.steps,
              "temperature": args.temperature, "measured_at": time.strftime("%Y-%m-%d"), "results": results}
    path = ROOT / "benchmarks/results/disagg_cpu.json"
    path.write_text(json.dumps(record, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
